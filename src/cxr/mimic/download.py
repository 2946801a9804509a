"""Download MIMIC-CXR-JPG from PhysioNet: the metadata first, then only the manifest's files.

`download_metadata` fetches `SHA256SUMS.txt` and the chexpert, split and metadata `.csv.gz` files
(and, for version 2.1.0, the radiologist-labelled test set). `download_subset` fetches exactly the
manifest's JPEGs (from MIMIC-CXR-JPG) and its studies' reports (from MIMIC-CXR, which has its own
checksum listing), in parallel threads. `download_demographics` fetches MIMIC-IV's patients and
admissions tables (a third project, with its own listing and data use agreement) into
`<dest>/mimiciv/<version>/hosp/`.

Every run fetches the checksum listings first, from the server: a listing found on disk is never
trusted, since anything could have written it (`cxr demo` writes one). Every file is written as
`<name>.part`, checked against its SHA-256 and only then renamed, so a file under its final name is
always complete and right. A `.part` left by an interrupted run is resumed with an HTTP Range
request. Files already present with the right checksum are not fetched again.

Only network trouble is retried. A local failure (the destination is a file or a broken symbolic
link, a folder cannot be made, the disk is full) fails the file at once with the local path, and a
body longer than announced (or, when nothing is announced, than `max_file_bytes`) fails it at once
instead of filling the disk.

Credentials come from PHYSIONET_USERNAME / PHYSIONET_PASSWORD, ~/.netrc or a prompt, travel only in
`session.auth` (never in a URL), and never appear in output, logs, files or exception text. Paths in
printed messages have the subject folder masked (`p********`), since subject_id never leaves data/.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import ipaddress
import logging
import netrc
import os
import random
import re
import sys
import threading
from collections.abc import Callable, Container, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from cxr.core.errors import CxrError, InputError
from cxr.core.hashing import file_sha256
from cxr.core.privacy import mask_subject
from cxr.mimic import schema
from cxr.mimic.schema import (
    MIMIC_IV_ADMISSIONS,
    MIMIC_IV_DEFAULT,
    MIMIC_IV_DIR,
    MIMIC_IV_MODULE,
    MIMIC_IV_MODULE_1_0,
    MIMIC_IV_PATIENTS,
    MIMIC_IV_VERSIONS,
)

# MIMIC-CXR-JPG versions `--version` accepts. 2.1.0 keeps 2.0.0's CSV names and images and adds
# the radiologist-labelled test set (schema.RADIOLOGIST_CSV). The reports come from MIMIC-CXR
# 2.0.0 whatever the version.
VERSIONS: tuple[str, ...] = (schema.VERSION, schema.RADIOLOGIST_VERSION)
JPG_PROJECT = "MIMIC-CXR-JPG"
REPORTS_PROJECT = "MIMIC-CXR"
MIMIC_IV_PROJECT = "MIMIC-IV"
_PROJECT_SLUGS = {
    JPG_PROJECT: "mimic-cxr-jpg",
    REPORTS_PROJECT: "mimic-cxr",
    MIMIC_IV_PROJECT: "mimiciv",
}


def jpg_base_url(version: str = schema.VERSION) -> str:
    """MIMIC-CXR-JPG's file root for `version`."""
    return f"https://physionet.org/files/mimic-cxr-jpg/{version}/"


def project_page(project: str, version: str = schema.VERSION) -> str:
    """The page where the project's data use agreement is signed."""
    slug = _PROJECT_SLUGS.get(project)
    if slug is None:
        return "the project's PhysioNet page"
    if project == REPORTS_PROJECT:
        version = schema.VERSION  # the reports come from MIMIC-CXR 2.0.0 whatever --version says
    return f"https://physionet.org/content/{slug}/{version}/"


def mimic_iv_base_url(version: str = MIMIC_IV_DEFAULT) -> str:
    """MIMIC-IV's file root for `version`."""
    return f"https://physionet.org/files/mimiciv/{version}/"


def demographics_files(version: str = MIMIC_IV_DEFAULT) -> tuple[tuple[str, str], ...]:
    """(path in MIMIC-IV's listing, path written under mimiciv/<version>/) of the two tables.
    Version 1.0 keeps them in its `core` module; they are written to `hosp/` whatever the
    version, so every version has one layout."""
    module = MIMIC_IV_MODULE_1_0 if version == "1.0" else MIMIC_IV_MODULE
    return tuple(
        (f"{module}/{name}", f"{MIMIC_IV_MODULE}/{name}")
        for name in (MIMIC_IV_PATIENTS, MIMIC_IV_ADMISSIONS)
    )


def metadata_files(version: str = schema.VERSION) -> tuple[str, ...]:
    """What `download metadata` fetches for `version`, besides the checksum listing."""
    files = tuple(f"{name}.gz" for name in schema.REQUIRED_CSVS)
    if version == schema.RADIOLOGIST_VERSION:
        files += (schema.RADIOLOGIST_CSV,)
    return files


REPORTS_BASE_URL = f"https://physionet.org/files/mimic-cxr/{schema.VERSION}/"
# Where each project's checksum listing is kept under the destination (MIMIC-CXR's is renamed so
# the two listings can sit side by side in the raw root).
JPG_SUMS = schema.SHA256SUMS
REPORTS_SUMS = "mimic-cxr-reports-SHA256SUMS.txt"
METADATA_FILES: tuple[str, ...] = metadata_files(schema.VERSION)
# The most bytes taken for a file whose size nobody announced: a close-delimited body can be
# endless. Far above anything either project ships that we fetch (MIMIC-CXR's checksum listing,
# the largest, is tens of MB).
MAX_FILE_BYTES = 512 << 20
# Local errors after which no other file can be written either: stop writing, fail the rest.
_FATAL_LOCAL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", None)) if e is not None
)

ENV_USERNAME = "PHYSIONET_USERNAME"
ENV_PASSWORD = "PHYSIONET_PASSWORD"
PHYSIONET_HOST = "physionet.org"

# Top-level files the two projects ship (plus our renamed listing); anything else in a listing must
# live under files/.
_CSV_STEMS = ("chexpert", "negbio", "split", "metadata")
TOP_LEVEL_FILES: frozenset[str] = frozenset(
    {
        schema.SHA256SUMS,
        REPORTS_SUMS,
        "LICENSE.txt",
        "README",
        "README.md",
        "IMAGE_FILENAMES",
        "mimic-cxr-2.1.0-test-set-labeled.csv",
        "mimic-cxr-reports.zip",
        "mimic-cxr-reports.tar.gz",
        "cxr-record-list.csv.gz",
        "cxr-study-list.csv.gz",
    }
    | {f"mimic-cxr-{schema.VERSION}-{stem}.csv{gz}" for stem in _CSV_STEMS for gz in ("", ".gz")}
)

# What MIMIC-IV's listing may name: its module folders and a few top-level files.
MIMIC_IV_DIRS: tuple[str, ...] = ("hosp", "icu", "core", "ed", "note")
MIMIC_IV_TOP_LEVEL: frozenset[str] = frozenset(
    {schema.SHA256SUMS, "LICENSE.txt", "CHANGELOG.txt", "README.txt", "README.md", "index.html"}
)

_SAFE_PATH_RE = re.compile(r"[A-Za-z0-9._/-]+")
_SUMS_LINE_RE = re.compile(r"([0-9a-fA-F]{64}) [ *]?(.*)")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DownloadConfig:
    """Options of `cxr download metadata` and `cxr download subset`."""

    dest: Path
    # MIMIC-CXR-JPG version; picks the default base URL and, for metadata, the files.
    version: str = schema.VERSION
    # None: jpg_base_url(version).
    base_url: str | None = None
    reports_base_url: str = REPORTS_BASE_URL
    manifest: Path | None = None
    reports: bool = True
    # MIMIC-IV (`download demographics`): its version and base URL (None: mimic_iv_base_url).
    mimic_iv_version: str = MIMIC_IV_DEFAULT
    mimic_iv_base_url: str | None = None
    workers: int = 8
    # Retries per file for connection errors, timeouts, 429 and 5xx (so at most retries + 1 tries).
    retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 15.0
    # requests' read timeout: the longest wait for the next bytes, not for the whole file.
    read_timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    max_file_bytes: int = MAX_FILE_BYTES

    @property
    def jpg_url(self) -> str:
        return self.base_url or jpg_base_url(self.version)

    @property
    def mimic_iv_url(self) -> str:
        return self.mimic_iv_base_url or mimic_iv_base_url(self.mimic_iv_version)

    def project_version(self, project: str) -> str:
        """The version of `project` this configuration fetches (for its data use agreement page)."""
        return self.mimic_iv_version if project == MIMIC_IV_PROJECT else self.version


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # "environment", "~/.netrc", "prompt": safe to print


@dataclass(frozen=True)
class Item:
    """One file to have under dest: its path relative to dest, its URL and its checksum.

    `size`: its length in bytes when a listing gives it (a longer body fails at once).
    `also`: other paths under dest where a copy with the right checksum counts as present (a
    report at the data guide's place, inside the study folder); a fetch writes `relpath`.
    """

    relpath: str
    url: str
    sha256: str
    project: str
    size: int | None = None
    also: tuple[str, ...] = ()


@dataclass
class Summary:
    fetched: int = 0
    fetched_bytes: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (display path, reason)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (listing, entry, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Listing:
    """A parsed SHA256SUMS file: safe entries, and the entries refused with why."""

    entries: dict[str, str]
    refused: list[tuple[str, str]]


# --------------------------------------------------------------------------- pure planning logic


def display_path(relpath: str) -> str:
    """A path fit for printing: the subject folder (`p` + subject_id) masked."""
    return mask_subject(relpath)


class _MaskSubjectFilter(logging.Filter):
    """urllib3 logs request URLs at DEBUG; those name the subject folder. Mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = display_path(record.getMessage())
        record.args = ()
        return True


def _mask_http_logs() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _MaskSubjectFilter) for f in logger.filters):
        logger.addFilter(_MaskSubjectFilter())


def unsafe_reason(
    relpath: str,
    dirs: tuple[str, ...] = (schema.FILES_DIR,),
    top_level: Container[str] = TOP_LEVEL_FILES,
) -> str | None:
    """Why `relpath` may not be written under the destination, or None when it is safe.

    Allowed: `[A-Za-z0-9._/-]` only, relative, no empty, `.` or `..` component, and either under
    one of `dirs` (MIMIC-CXR's `files/` by default) or one of the `top_level` files. Checked
    lexically, so a `files/` that the user made a symlink to another disk keeps working.
    """
    if not relpath:
        return "empty path"
    if relpath.startswith("/"):
        return "absolute path"
    if "\\" in relpath:
        return "backslash in path"
    if not _SAFE_PATH_RE.fullmatch(relpath):
        return "unexpected characters in path"
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "'..', '.' or empty component in path"
    if parts[0] in dirs:
        if len(parts) < 2:
            return f"not a file under {parts[0]}/"
        return None
    if len(parts) == 1 and relpath in top_level:
        return None
    return f"not under {'/, '.join(dirs)}/ and not a known top-level file"


def parse_sha256sums(
    text: str,
    source: str = schema.SHA256SUMS,
    keep: Container[str] | None = None,
    dirs: tuple[str, ...] = (schema.FILES_DIR,),
    top_level: Container[str] = TOP_LEVEL_FILES,
) -> Listing:
    """Parse `<sha256 hex> <relative path>` lines (sha256sum's ` *` binary marker accepted).

    Unsafe paths and malformed lines are refused, not fatal: they are reported. With `keep`, only
    entries whose path is in it are stored (MIMIC-CXR's listing has ~600k lines, we need a few).
    `dirs` and `top_level`: what the project's listing may name (`unsafe_reason`).
    Raises InputError when nothing in the text looks like a checksum line (an HTML error page...).
    """
    entries: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    n_valid = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        m = _SUMS_LINE_RE.fullmatch(line)
        if m is None:
            refused.append((f"line {lineno}", "not a '<sha256> <path>' line"))
            continue
        digest, relpath = m.group(1).lower(), m.group(2)
        n_valid += 1
        reason = unsafe_reason(relpath, dirs, top_level)
        if reason is not None:
            refused.append((relpath, reason))
            continue
        if keep is None or relpath in keep:
            entries[relpath] = digest
    if n_valid == 0:
        raise InputError(f"{source}: no '<sha256> <path>' lines: not a checksum listing")
    return Listing(entries, refused)


def join_url(base_url: str, relpath: str) -> str:
    return base_url.rstrip("/") + "/" + quote(relpath, safe="/")


def plan_items(
    relpaths: Iterable[str], listing: Mapping[str, str], base_url: str, project: str, source: str
) -> tuple[list[Item], list[tuple[str, str]]]:
    """The files to have, each with its checksum; unsafe or unlisted paths become failures."""
    items: list[Item] = []
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for relpath in relpaths:
        if relpath in seen:
            continue
        seen.add(relpath)
        reason = unsafe_reason(relpath)
        if reason is not None:
            failed.append((display_path(relpath), f"refused: {reason}"))
            continue
        digest = listing.get(relpath)
        if digest is None:
            failed.append((display_path(relpath), f"not listed in {source}"))
            continue
        items.append(Item(relpath, join_url(base_url, relpath), digest, project))
    return items, failed


def is_present(target: Path, sha256: str) -> bool:
    """True when `target` exists with the expected checksum (then it is never fetched again)."""
    try:
        return target.is_file() and file_sha256(target) == sha256
    except OSError:
        return False


def item_present(item: Item, dest: Path) -> bool:
    """The item is under dest, at its own path or one of its `also` paths, with its checksum."""
    return any(is_present(dest / rel, item.sha256) for rel in (item.relpath, *item.also))


def split_present(items: list[Item], dest: Path, workers: int = 1) -> tuple[list[Item], list[Item]]:
    """(to_fetch, already_present): hashing runs in threads (hashlib releases the GIL)."""
    if not items:
        return [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        present = list(pool.map(lambda it: item_present(it, dest), items))
    to_fetch = [it for it, p in zip(items, present, strict=True) if not p]
    skipped = [it for it, p in zip(items, present, strict=True) if p]
    return to_fetch, skipped


def check_base_url(url: str, option: str = "--base-url") -> str:
    """The URL with a trailing slash; https only, except plain http to a loopback host (tests)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # Never echo such a URL: it holds a credential.
        raise CxrError(
            f"{option}: credentials in the URL are not accepted; use {ENV_USERNAME}/"
            f"{ENV_PASSWORD} or ~/.netrc"
        )
    if not parts.hostname:
        raise CxrError(f"{option}: not a URL: {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise CxrError(
            f"{option}: {url} is not https; plain http is allowed only to loopback hosts"
        )
    if parts.scheme not in ("https", "http"):
        raise CxrError(f"{option}: {url} is not https")
    return url if url.endswith("/") else url + "/"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- local paths


def _shown(path: Path | str) -> str:
    return display_path(str(path))


def _blocker(path: Path, include_self: bool) -> str | None:
    """Why `path` cannot be made or written, when a path on the way is the cause: the nearest
    existing ancestor (or `path` itself) that is a broken symbolic link or not a directory."""
    candidates = [path, *path.parents] if include_self else list(path.parents)
    for p in candidates:
        if os.path.islink(p) and not os.path.exists(p):
            return f"{_shown(p)} is a broken symbolic link"
        if os.path.lexists(p):
            return None if os.path.isdir(p) else f"{_shown(p)} is not a directory"
    return None


def _local_failure(exc: OSError, path: Path, action: str, is_dir: bool = False) -> _FileFailed:
    """A _FileFailed for a local OSError: names the local path (patient folder masked)."""
    why = _blocker(path, include_self=is_dir) or exc.strerror or type(exc).__name__
    return _FileFailed(f"cannot {action} {_shown(path)}: {why}", keep_part=True, errno=exc.errno)


def _local(fn: Callable, path: Path, action: str, is_dir: bool = False):
    """fn(), with an OSError turned into a _FileFailed about `path` (never retried)."""
    try:
        return fn()
    except OSError as exc:
        raise _local_failure(exc, path, action, is_dir) from None


def demo_marker() -> str:
    from cxr.mimic.demo import MARKER

    return MARKER


def prepare_dest(dest: Path) -> Path:
    """Make sure `dest` is a directory we may fill; one-line CxrError otherwise.

    Refuses the synthetic tree `cxr demo` writes (its hidden marker file): downloading into it
    would mix real and synthetic files under one listing.
    """
    dest = Path(dest)
    shown = _shown(dest)
    if os.path.islink(dest) and not dest.exists():
        raise CxrError(
            f"destination {shown} is a broken symbolic link (to {_shown(os.readlink(dest))}): "
            "fix or remove it, or choose another --dest"
        )
    if dest.exists() and not dest.is_dir():
        raise CxrError(f"destination {shown} is not a directory: choose another --dest")
    if os.path.lexists(dest / demo_marker()):
        raise CxrError(
            f"destination {shown} is the synthetic demo tree written by `cxr demo`: use another "
            "--dest (or delete it)"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = _blocker(dest, include_self=True) or exc.strerror or type(exc).__name__
        raise CxrError(f"destination {shown}: cannot create it: {why}") from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise CxrError(f"destination {shown} is not writable")
    return dest


# --------------------------------------------------------------------------- credentials


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_credentials(
    base_url: str,
    env: Mapping[str, str] | None = None,
    netrc_path: Path | None = None,
    interactive: bool | None = None,
    warn: Callable[[str], None] = _warn,
) -> Credentials:
    """Environment, else ~/.netrc (the base URL's host, then physionet.org), else a prompt.

    A ~/.netrc that group or others may access is used with a one-line warning (as ssh warns
    about a private key's mode); its content is never shown.
    """
    env = os.environ if env is None else env
    user, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if user and password:
        return Credentials(user, password, "environment")
    if netrc_path is None:
        netrc_path = Path(env.get("NETRC") or Path.home() / ".netrc")
    if netrc_path.is_file():
        found = _from_netrc(netrc_path, [urlsplit(base_url).hostname or "", PHYSIONET_HOST])
        if found is not None:
            _check_netrc_mode(netrc_path, warn)
            return found
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        print("PhysioNet username: ", end="", file=sys.stderr, flush=True)
        user = user or input().strip()
        password = getpass.getpass("PhysioNet password: ")
        if user and password:
            return Credentials(user, password, "prompt")
    raise CxrError(
        f"no PhysioNet credentials: set {ENV_USERNAME} and {ENV_PASSWORD}, or add "
        f"'machine {PHYSIONET_HOST} login USER password PASS' to ~/.netrc (mode 600)"
    )


def _check_netrc_mode(path: Path, warn: Callable[[str], None]) -> None:
    # Python's netrc checks the mode only for the default file it finds itself; ours is explicit.
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        warn(
            f"warning: {path} holds a password and is accessible by group or others "
            f"(mode {mode:04o}); run: chmod 600 {path}"
        )


def _from_netrc(path: Path, hosts: list[str]) -> Credentials | None:
    try:
        table = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        # exc.msg may quote a token of the file (a password): never show it.
        why = "access too permissive (chmod 600)" if "permissive" in str(exc.msg) else "parse error"
        raise CxrError(f"{path}: cannot read ({why}, line {exc.lineno})") from None
    except OSError as exc:
        raise CxrError(f"{path}: cannot read ({exc.strerror})") from None
    for host in hosts:
        auth = table.authenticators(host) if host else None
        if auth and auth[0] and auth[2]:
            return Credentials(auth[0], auth[2], "~/.netrc")
    return None


def auth_message(status: int, project: str, source: str = "", version: str = schema.VERSION) -> str:
    """One line for a 401/403: wrong credentials, or the project's data use agreement unsigned."""
    page = project_page(project, version)
    origin = f" (from {source})" if source else ""
    if status == 401:
        return (
            f"PhysioNet refused the credentials{origin} for {project} (HTTP 401): check the "
            f"username and password, and that the account is credentialed"
        )
    return (
        f"PhysioNet denied access to {project} (HTTP 403): sign its data use agreement at {page} "
        f"(or check the credentials{origin})"
    )


# --------------------------------------------------------------------------- fetching


class _FileFailed(Exception):
    """This file cannot be fetched now; `reason` is safe to print (no URL, no credential).

    `errno` is set for a local failure (the local file system's error number).
    """

    def __init__(self, reason: str, keep_part: bool = False, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep_part = keep_part
        self.errno = errno


class _AuthFailed(_FileFailed):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}", keep_part=True)
        self.status = status


class _Stopped(Exception):
    pass


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a retry may cure. OSError here is a socket's: every local file operation goes through
    `_local`, which turns its OSError into a _FileFailed first."""
    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def _announced_length(resp) -> int | None:
    value = resp.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise _local_failure(exc, part, "read") from None


class Fetcher:
    """Holds the HTTP session (made on first use: credentials are asked for only once the
    destination has been checked) and fetches files into `.part` then their final name."""

    def __init__(
        self,
        cfg: DownloadConfig,
        credentials: Callable[[], Credentials] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._credentials = credentials or (lambda: resolve_credentials(cfg.jpg_url))
        self._session = None
        self._source = ""
        self._lock = threading.Lock()
        self.on_bytes = on_bytes or (lambda n: None)
        self.stop = threading.Event()
        self.auth_failed: dict[str, str] = {}  # project -> message; later files fail at once
        self.local_fatal: str | None = None  # disk full or read-only: later files fail at once

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter

                creds = self._credentials()
                _mask_http_logs()
                session = requests.Session()
                # requests reads ~/.netrc itself only when auth is unset; ours is always set.
                session.auth = (creds.username, creds.password)
                session.headers["User-Agent"] = "cxr-download"
                # Byte offsets for Range must be the file's bytes, never a decoded stream.
                session.headers["Accept-Encoding"] = "identity"
                adapter = HTTPAdapter(
                    pool_connections=2, pool_maxsize=max(2, self.cfg.workers), max_retries=0
                )
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._session = session
                self._source = creds.source
            return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def _backoff(self, attempt: int, retry_after: str | None = None) -> None:
        cfg = self.cfg
        delay = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (attempt - 1))
        delay *= 0.5 + random.random() / 2  # jitter: parallel workers do not retry in lockstep
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), cfg.backoff_max_s))
        if self.stop.wait(delay):
            raise _Stopped

    def transfer(self, url: str, part: Path, max_bytes: int | None = None) -> None:
        """Fill `part` with the resource at `url`, resuming from its current size with Range.

        Retries connection errors, timeouts, 429 and 5xx with exponential backoff (bounded by
        cfg.retries). Takes at most the announced Content-Length, and never more than `max_bytes`
        (the listed size, else cfg.max_file_bytes) for the whole file: a body that goes on fails
        at once. Raises _FileFailed; the reason never contains the URL.
        """
        cfg = self.cfg
        limit = cfg.max_file_bytes if max_bytes is None else max_bytes
        what = "the listed size" if max_bytes is not None else "the limit for a file"
        errors = _network_errors()
        last = ""
        retry_after: str | None = None
        _local(lambda: part.parent.mkdir(parents=True, exist_ok=True), part.parent, "create", True)
        for attempt in range(cfg.retries + 1):
            if attempt:
                self._backoff(attempt, retry_after)
            retry_after = None
            if self.stop.is_set():
                raise _Stopped
            offset = _part_size(part)
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with self.session.get(
                    url,
                    headers=headers,
                    stream=True,
                    timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                ) as resp:
                    status = resp.status_code
                    if status in (401, 403):
                        raise _AuthFailed(status)
                    if status == 416 and offset:
                        return  # the .part already holds the whole file: verification decides
                    if status == 429 or status >= 500:
                        last = f"HTTP {status}"
                        retry_after = resp.headers.get("Retry-After")
                        continue
                    if status == 206 and offset:
                        m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("Content-Range", ""))
                        if m is None or int(m.group(1)) != offset:
                            _local(lambda: part.unlink(missing_ok=True), part, "delete")
                            last = "unexpected Content-Range"  # a range we did not ask for
                            continue
                        mode, start = "ab", offset
                    elif status == 200:
                        mode, start = "wb", 0  # a fresh file, or a server that ignored Range
                    else:
                        raise _FileFailed(f"HTTP {status}")
                    allowed = limit - start
                    announced = _announced_length(resp)
                    if announced is not None:
                        if announced > allowed:
                            raise _FileFailed(
                                f"the server announced {start + announced} bytes, more than "
                                f"{what} ({limit} bytes)"
                            )
                        allowed, what = announced, "the announced Content-Length"
                    self._write_body(resp, part, mode, allowed, what)
                    return
            except _FileFailed:
                raise
            except errors as exc:
                # The class name only: str(exc) carries the URL (with the subject folder).
                last = type(exc).__name__
        raise _FileFailed(f"gave up after {cfg.retries + 1} tries: {last}", keep_part=True)

    def _write_body(self, resp, part: Path, mode: str, allowed: int, what: str) -> None:
        """Stream the body into `part`; more than `allowed` bytes fails the file at once."""
        # Closed in the finally below, where a failing close (a buffered write that hits a full
        # disk) is reported as the local error it is.
        fh = _local(lambda: open(part, mode), part, "write")  # noqa: SIM115
        try:
            received = 0
            for chunk in resp.raw.stream(self.cfg.chunk_bytes, decode_content=False):
                if self.stop.is_set():
                    raise _Stopped
                received += len(chunk)
                if received > allowed:
                    raise _FileFailed(f"the server sent more than {what} ({allowed} bytes)")
                _local(lambda c=chunk: fh.write(c), part, "write")
                self.on_bytes(len(chunk))
        finally:
            try:
                fh.close()
            except OSError as exc:  # a buffered write that failed at close (disk full)
                raise _local_failure(exc, part, "write") from None

    def fetch(self, item: Item, dest: Path) -> int:
        """Make dest/item.relpath the verified file; returns its size. Raises _FileFailed."""
        if item.project in self.auth_failed:
            raise _FileFailed(self.auth_failed[item.project], keep_part=True)
        if self.local_fatal is not None:
            raise _FileFailed(self.local_fatal, keep_part=True)
        target = dest / item.relpath
        part = target.with_name(target.name + ".part")
        try:
            for round_ in (1, 2):
                self.transfer(item.url, part, item.size)
                if _local(lambda: file_sha256(part), part, "read") == item.sha256:
                    size = _local(lambda: part.stat().st_size, part, "read")
                    _local(lambda: os.replace(part, target), target, "write")
                    return size
                # Wrong bytes (or a stale .part from elsewhere): delete, then one clean try more.
                _local(lambda: part.unlink(missing_ok=True), part, "delete")
                if round_ == 2:
                    raise _FileFailed("checksum mismatch (downloaded twice)")
        except _AuthFailed as exc:
            message = auth_message(
                exc.status, item.project, self._source, self.cfg.project_version(item.project)
            )
            self.auth_failed.setdefault(item.project, message)
            raise _FileFailed(message, keep_part=True) from None
        except _FileFailed as exc:
            if exc.errno in _FATAL_LOCAL_ERRNOS and self.local_fatal is None:
                self.local_fatal = f"not written: an earlier file failed with: {exc.reason}"
            if not exc.keep_part:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
            raise
        raise AssertionError("unreachable")

    def fetch_listing(self, base_url: str, project: str, target: Path, source: str) -> str:
        """Download a checksum listing to `target` (atomically) and return its text. It is the
        root of trust, so it is fetched on every run and only checked to parse."""
        part = target.with_name(target.name + ".part")
        try:
            # Never resume a listing: it has no checksum of its own.
            _local(lambda: part.unlink(missing_ok=True), part, "delete")
            self.transfer(join_url(base_url, schema.SHA256SUMS), part)
            text = _local(lambda: part.read_text(encoding="utf-8", errors="replace"), part, "read")
            parse_sha256sums(text, source)
            _local(lambda: os.replace(part, target), target, "write")
            return text
        except _AuthFailed as exc:
            raise CxrError(
                auth_message(exc.status, project, self._source, self.cfg.project_version(project))
            ) from None
        except _FileFailed as exc:
            raise CxrError(f"{source} of {project}: {exc.reason}") from None
        finally:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the two commands


def _load_listing(
    fetcher: Fetcher,
    base_url: str,
    project: str,
    path: Path,
    summary: Summary,
    keep: Container[str] | None = None,
    **allowed,
) -> dict[str, str]:
    """The project's listing, fetched now: one already on disk is replaced, never trusted.
    `allowed`: `dirs` and `top_level` of `parse_sha256sums`, for a project other than
    MIMIC-CXR(-JPG)."""
    text = fetcher.fetch_listing(base_url, project, path, path.name)
    listing = parse_sha256sums(text, path.name, keep, **allowed)
    summary.refused.extend((path.name, display_path(e), why) for e, why in listing.refused)
    return listing.entries


def _run_items(fetcher: Fetcher, items: list[Item], dest: Path, summary: Summary) -> None:
    """Fetch `items` in parallel with a progress bar; outcomes go into `summary`."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from cxr.core.progress import bars_enabled

    workers = max(1, min(fetcher.cfg.workers, len(items) or 1))
    total_files = len(items)
    done = {"files": 0, "bytes_done_files": 0}
    # make_progress's conventions (drawn only on a terminal, never with --quiet), with byte
    # columns instead of its item count: the task counts bytes, the files go in a field.
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("files {task.fields[files]}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not bars_enabled(),
    )
    task = progress.add_task("download", total=None, files=f"0/{total_files}")
    fetcher.on_bytes = lambda n: progress.advance(task, n)

    def on_done(size: int | None) -> None:
        done["files"] += 1
        if size is not None:
            done["bytes_done_files"] += size
        # Bytes are unknown until fetched: estimate the total from the files finished so far, so
        # the bar and "time left" mean something.
        n_sized = summary.fetched
        total = None
        if n_sized:
            mean = done["bytes_done_files"] / n_sized
            current = progress.tasks[0].completed
            total = current + mean * (total_files - done["files"])
        progress.update(task, total=total, files=f"{done['files']}/{total_files}")

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-download")
    try:
        with progress:
            futures = {pool.submit(fetcher.fetch, it, dest): it for it in items}
            for fut in as_completed(futures):
                item = futures[fut]
                try:
                    size = fut.result()
                except _FileFailed as exc:
                    summary.failed.append((display_path(item.relpath), exc.reason))
                    on_done(None)
                    continue
                summary.fetched += 1
                summary.fetched_bytes += size
                on_done(size)
    except BaseException:
        # Ctrl-C: workers stop between chunks; their .part files are resumed next time.
        fetcher.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise CxrError(f"version {version!r} is not one of {', '.join(VERSIONS)}")


def download_metadata(cfg: DownloadConfig, fetcher: Fetcher | None = None) -> Summary:
    """SHA256SUMS.txt, then the chexpert, split and metadata `.csv.gz` (and the version's other
    metadata files), each verified against it."""
    _check_version(cfg.version)
    base = check_base_url(cfg.jpg_url)
    dest = prepare_dest(Path(cfg.dest))
    fetcher = fetcher or Fetcher(cfg)
    summary = Summary()
    try:
        listing = _load_listing(fetcher, base, JPG_PROJECT, dest / JPG_SUMS, summary)
        files = metadata_files(cfg.version)
        items, failed = plan_items(files, listing, base, JPG_PROJECT, JPG_SUMS)
        summary.failed.extend(failed)
        _fetch_missing(fetcher, items, dest, summary)
    finally:
        fetcher.close()
    return summary


def _fetch_missing(fetcher: Fetcher, items: list[Item], dest: Path, summary: Summary) -> None:
    """Fetch the items not already present and verified under `dest`; count the others skipped."""
    to_fetch, skipped = split_present(items, dest)
    summary.skipped = len(skipped)
    if to_fetch:
        _run_items(fetcher, to_fetch, dest, summary)


def download_demographics(cfg: DownloadConfig, fetcher: Fetcher | None = None) -> Summary:
    """MIMIC-IV's `SHA256SUMS.txt`, then its patients and admissions tables, each verified
    against it, into `<dest>/mimiciv/<version>/` (the tables under `hosp/`)."""
    if cfg.mimic_iv_version not in MIMIC_IV_VERSIONS:
        raise CxrError(
            f"MIMIC-IV version {cfg.mimic_iv_version!r} is not one of {', '.join(MIMIC_IV_VERSIONS)}"
        )
    base = check_base_url(cfg.mimic_iv_url)
    raw = prepare_dest(Path(cfg.dest))  # refuses the demo tree, a file, a broken link
    dest = prepare_dest(raw / MIMIC_IV_DIR / cfg.mimic_iv_version)
    fetcher = fetcher or Fetcher(cfg)
    summary = Summary()
    files = demographics_files(cfg.mimic_iv_version)
    try:
        listing = _load_listing(
            fetcher,
            base,
            MIMIC_IV_PROJECT,
            dest / schema.SHA256SUMS,
            summary,
            keep=frozenset(remote for remote, _ in files),
            dirs=MIMIC_IV_DIRS,
            top_level=MIMIC_IV_TOP_LEVEL,
        )
        items: list[Item] = []
        for remote, local in files:
            digest = listing.get(remote)
            if digest is None:
                summary.failed.append((local, f"{remote} is not listed in {schema.SHA256SUMS}"))
                continue
            items.append(Item(local, join_url(base, remote), digest, MIMIC_IV_PROJECT))
        _fetch_missing(fetcher, items, dest, summary)
    finally:
        fetcher.close()
    return summary


def read_manifest_paths(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(image relpaths, report places) of a manifest (read and checked by cxr.mimic.manifest);
    each study's report places are (MIMIC-CXR's, the data guide's), as schema.report_relpaths."""
    from cxr.mimic.manifest import read_manifest

    df = read_manifest(path)
    images = [p for p in df["image_path"].to_list() if p is not None]
    studies = df.select("subject_id", "study_id").drop_nulls().unique(maintain_order=True)
    reports = [
        schema.report_relpaths(int(s), int(t))
        for s, t in zip(studies["subject_id"].to_list(), studies["study_id"].to_list(), strict=True)
    ]
    return images, reports


def download_subset(cfg: DownloadConfig, fetcher: Fetcher | None = None) -> Summary:
    """Exactly the manifest's JPEGs and (unless cfg.reports is False) its studies' reports.

    A report already at either of its places with the right checksum is not fetched again;
    a fetched one goes to MIMIC-CXR's place (the one its listing names).
    """
    _check_version(cfg.version)
    base = check_base_url(cfg.jpg_url)
    reports_base = check_base_url(cfg.reports_base_url, "--reports-base-url")
    if cfg.manifest is None:
        raise CxrError("no manifest given")
    images, places = read_manifest_paths(Path(cfg.manifest))
    if not cfg.reports:
        places = []
    reports = [official for official, _ in places]
    guide_place = dict(places)
    dest = prepare_dest(Path(cfg.dest))
    fetcher = fetcher or Fetcher(cfg)
    summary = Summary()
    try:
        jpg_sums = _load_listing(
            fetcher, base, JPG_PROJECT, dest / JPG_SUMS, summary, keep=frozenset(images)
        )
        items, failed = plan_items(images, jpg_sums, base, JPG_PROJECT, JPG_SUMS)
        summary.failed.extend(failed)
        if reports:
            rep_sums = _load_listing(
                fetcher,
                reports_base,
                REPORTS_PROJECT,
                dest / REPORTS_SUMS,
                summary,
                keep=frozenset(reports),
            )
            rep_items, failed = plan_items(
                reports, rep_sums, reports_base, REPORTS_PROJECT, REPORTS_SUMS
            )
            items += [replace(it, also=(guide_place[it.relpath],)) for it in rep_items]
            summary.failed.extend(failed)
        to_fetch, skipped = split_present(items, dest, cfg.workers)
        summary.skipped = len(skipped)
        if to_fetch:
            _run_items(fetcher, to_fetch, dest, summary)
    finally:
        fetcher.close()
    return summary


def format_summary(summary: Summary, max_lines: int = 20) -> tuple[list[str], list[str]]:
    """(lines for stdout, lines for stderr): counts, then what failed and why, then refusals."""
    out = [
        f"fetched {summary.fetched} files ({summary.fetched_bytes / 1e6:.1f} MB), "
        f"{summary.skipped} already present and verified, {len(summary.failed)} failed"
    ]
    err: list[str] = []
    if summary.refused:
        err.append(f"refused {len(summary.refused)} unsafe or malformed checksum-listing entries:")
        err += [f"  {src}: {entry}: {why}" for src, entry, why in summary.refused[:max_lines]]
        if len(summary.refused) > max_lines:
            err.append(f"  ... and {len(summary.refused) - max_lines} more")
    if summary.failed:
        err.append(f"failed ({len(summary.failed)}):")
        err += [f"  {path}: {why}" for path, why in summary.failed[:max_lines]]
        if len(summary.failed) > max_lines:
            err.append(f"  ... and {len(summary.failed) - max_lines} more")
        err.append("rerun the same command to retry; finished files are not fetched again")
    return out, err
