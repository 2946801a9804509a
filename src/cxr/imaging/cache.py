"""The image cache: every manifest image decoded once, resized, in one uint8 memory-mapped array.

Layout of `<data root>/interim/cache-<size>/` (the contract the readers rely on):

    images.npy      uint8 (N, S, S), rows in manifest order; failed rows are all zeros
    keys.parquet    dicom_id, image_path of each row, in row order: the image set the cache holds
                    (the path's patient folder masked, as everywhere outside the raw data)
    index.parquet   dicom_id, row, ok, error  (written once every row has been attempted)
    cache.json      size, method, images_sha256, manifest_sha256, n, created, cxr_version, raw_dir
    journal/        completion records: one JSON line per finished chunk of rows
    .lock           serialises creation when several shards start at once
    .run.lock       held by every run for its whole length (below); names the runs holding it

Kill safety: a chunk's rows are written into the memmap and flushed (msync) by the worker before
the parent appends the chunk's record to the journal and fsyncs it. A row counts as done only
once a journal record says so, so a SIGKILL at any moment loses at most unrecorded work, which
the next run redoes (decoding is deterministic, so redone rows are byte-identical). A torn last
journal line is ignored. index.parquet is derived from the journal and written atomically when
the last row is recorded.

One run at a time: a full build (or --force) holds `.run.lock` exclusively, shard writers hold it
shared (they fill disjoint rows, so they run together by design). A run that cannot take it stops
with one line naming the holders (pid, host, start time) from the lock file; the lock goes with
its process, however that ends. Workers ignore SIGINT: on Ctrl-C the parent alone stops, ends the
pool and leaves a cache the next run resumes.

What a cache is keyed on: `images_sha256`, a hash of the ordered list of (dicom_id, image_path)
it holds, not the manifest file's bytes. A manifest rewritten with other columns (the report
sections) or other label values still matches its cache. When the image set changes, a full build
carries the decoded rows of images both sets share over into the new layout and decodes only the
rest (`carry_over`); shards refuse that step and ask for one full run first.

Sharding: `--shard i/n` takes the i-th of n contiguous blocks of rows. The pixel data starts on a
page boundary and blocks start on page boundaries, so shards on different machines writing one
file on a shared file system never write the same page.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cxr import __version__
from cxr.core.atomic import atomic_path, write_text_atomic
from cxr.core.defaults import CACHE_SIZE
from cxr.core.errors import CxrError, InputError, MissingInput
from cxr.core.hashing import file_sha256

IMAGES = "images.npy"
KEYS = "keys.parquet"
INDEX = "index.parquet"
META = "cache.json"
JOURNAL = "journal"
LOCK = ".lock"
RUN_LOCK = ".run.lock"
PAGE = 4096
INDEX_SCHEMA = {"dicom_id": pl.String, "row": pl.Int64, "ok": pl.Boolean, "error": pl.String}


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Cache:
    dir: Path
    images: np.ndarray  # read-only memmap (N, S, S) uint8
    index: pl.DataFrame
    meta: dict
    size: int


def cache_size_of(cache_dir: str | os.PathLike[str]) -> int | None:
    """The size a cache directory is named for (`cache-256` -> 256), else None."""
    name = Path(cache_dir).name
    prefix, _, size = name.partition("-")
    return int(size) if prefix == "cache" and size.isdigit() else None


def _preprocess_command(cache_dir: Path) -> str:
    size = cache_size_of(cache_dir)
    return f"`cxr preprocess --size {size}`" if size else "`cxr preprocess`"


def load_cache(cache_dir: str | os.PathLike[str]) -> Cache:
    """Open a complete cache read-only. Raises CxrError if it is missing or unfinished."""
    d = Path(cache_dir)
    meta_path, index_path, images_path = d / META, d / INDEX, d / IMAGES
    if not meta_path.is_file() or not images_path.is_file():
        raise MissingInput(d, "image cache", f"{_preprocess_command(d)} builds it")
    if not index_path.is_file():
        raise InputError(
            f"{d}: image cache is incomplete (run {_preprocess_command(d)} again to finish it)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(images_path, mmap_mode="r")
        index = pl.read_parquet(index_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{d}: unreadable image cache: {exc}") from None
    size = int(meta["size"])
    if images.dtype != np.uint8 or images.shape != (int(meta["n"]), size, size):
        raise InputError(f"{images_path}: shape {images.shape} does not match {META}")
    if index.height != images.shape[0]:
        raise InputError(f"{index_path}: {index.height} rows but {images.shape[0]} images")
    return Cache(dir=d, images=images, index=index, meta=meta, size=size)


def rows_for(cache: Cache, dicom_ids: Sequence[str] | pl.Series) -> np.ndarray:
    """Cache rows of `dicom_ids`, in their order. Raises CxrError if any is absent or failed."""
    wanted = pl.DataFrame({"dicom_id": pl.Series(list(dicom_ids), dtype=pl.String)})
    joined = wanted.with_row_index("_pos").join(cache.index, on="dicom_id", how="left")
    joined = joined.sort("_pos")
    missing = joined.filter(pl.col("row").is_null())
    failed = joined.filter(pl.col("row").is_not_null() & ~pl.col("ok"))
    if missing.height or failed.height:
        parts = []
        if missing.height:
            parts.append(
                f"{missing.height} dicom_ids not in the cache (e.g. {missing['dicom_id'][0]})"
            )
        if failed.height:
            parts.append(
                f"{failed.height} failed to decode (e.g. {failed['dicom_id'][0]}: {failed['error'][0]})"
            )
        raise CxrError(f"{cache.dir}: " + "; ".join(parts))
    return joined["row"].to_numpy().astype(np.int64)


# ----------------------------------------------------------------------------- building


@dataclass(frozen=True)
class PreprocessConfig:
    manifest: Path
    cache_dir: Path
    raw: Path | None = None  # default: manifest.json's raw_dir
    size: int = CACHE_SIZE
    workers: int = 0  # 0: one per CPU core
    shard: tuple[int, int] | None = None  # (i, n): fill only the i-th of n blocks of rows
    force: bool = False
    chunk: int = 32  # rows per task: one flush and one journal record each


@dataclass
class BuildResult:
    n: int
    done: int  # decoded in this run (failures not included)
    skipped: int  # already cached before this run (carried over included)
    failed: list[tuple[str, str]]  # (dicom_id, reason), this run
    pending: int  # rows no run has attempted yet (other shards' work)
    complete: bool  # index.parquet written
    seconds: float
    carried: int = 0  # rows kept from the cache's previous image set


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def manifest_keys(manifest: Path) -> pl.DataFrame:
    """The manifest's (dicom_id, image_path) in manifest order: the image set a cache holds."""
    from cxr.mimic.manifest import read_manifest

    df = read_manifest(manifest)  # one-line errors for a missing or malformed manifest
    df = df.select(pl.col("dicom_id").cast(pl.String), pl.col("image_path").cast(pl.String))
    if df["dicom_id"].null_count() or df["image_path"].null_count():
        raise InputError(f"{manifest}: null dicom_id or image_path")
    if df["dicom_id"].n_unique() != df.height:
        raise InputError(f"{manifest}: duplicate dicom_id values")
    return df


def stored_keys(keys: pl.DataFrame) -> pl.DataFrame:
    """(dicom_id, image_path) as the cache stores and hashes them: the patient folder of each
    path masked (`cxr.core.privacy`). The study folder and file name still name the image."""
    from cxr.core.privacy import mask_subject

    masked = [mask_subject(p) for p in keys["image_path"].to_list()]
    return pl.DataFrame(
        {"dicom_id": keys["dicom_id"], "image_path": pl.Series(masked, dtype=pl.String)}
    )


def images_key(keys: pl.DataFrame) -> str:
    """SHA-256 of the ordered (dicom_id, image_path) list: what a cache is keyed on."""
    import hashlib

    digest = hashlib.sha256()
    for dicom_id, path in stored_keys(keys).iter_rows():
        digest.update(f"{dicom_id}\t{path}\n".encode())
    return digest.hexdigest()


def holds_manifest(cache: Cache, manifest: Path, key: str | None = None) -> bool:
    """Whether `cache` holds exactly the manifest's image set, in its order (`key`: the
    manifest's `images_key`, when already computed)."""
    held = cache.meta.get("images_sha256")
    if held is None:  # a cache written before the key existed: keyed on the manifest's bytes
        return cache.meta.get("manifest_sha256") == file_sha256(manifest)
    return held == (key or images_key(manifest_keys(manifest)))


def _cache_state(cache_dir: Path, manifest: Path, key: str) -> str | None:
    """None when the cache is complete and holds the manifest's images, else what is wrong."""
    try:
        cache = load_cache(cache_dir)
    except MissingInput:
        return "not built"
    except CxrError as exc:
        return "incomplete" if "incomplete" in str(exc) else "unreadable"
    return None if holds_manifest(cache, manifest, key) else "another image set"


def choose_cache(interim: Path, manifest: Path, image_size: int, cache_size: int = 0) -> Path:
    """The cache training reads for a model input of `image_size`.

    `cache_size` set: `interim/cache-<cache_size>`. Otherwise the smallest cache under `interim`
    of at least `image_size` (random crops are resized down to it) that is complete and holds the
    manifest's images. When none can, the message names the one command that makes one: the
    smallest such cache present (preprocess finishes or updates it, decoding only what it lacks),
    else the default cache size when it serves `image_size`, else `image_size` itself.
    """
    key = images_key(manifest_keys(manifest))  # a missing manifest is reported first
    candidates = {}
    if interim.is_dir():
        for p in interim.iterdir():
            size = cache_size_of(p)
            wanted = size == cache_size if cache_size else size is not None and size >= image_size
            if wanted and p.is_dir():
                candidates[size] = p
    states = {size: _cache_state(candidates[size], manifest, key) for size in sorted(candidates)}
    for size, state in states.items():
        if state is None:
            return candidates[size]
    if states:
        size = min(states)
    elif cache_size:
        size = cache_size
    else:
        size = max(CACHE_SIZE, image_size)
    found = ", ".join(f"cache-{s}: {state}" for s, state in states.items())
    want = (
        f"image cache cache-{size}"
        if cache_size
        else f"image cache of at least {image_size} px (the model input)"
    )
    what = f"{want} holding the manifest's images" + (f" ({found})" if found else "")
    verb = "updates it, decoding only the images it lacks" if states else "builds it"
    raise MissingInput(interim / f"cache-{size}", what, f"`cxr preprocess --size {size}` {verb}")


def read_manifest_images(manifest: Path, raw: Path | None) -> tuple[pl.DataFrame, Path, str]:
    """(dicom_id, image_path) in manifest order, the raw root, and the manifest's sha256."""
    from cxr.mimic.manifest import read_manifest_info

    df = manifest_keys(manifest)
    if raw is None:
        raw_dir = read_manifest_info(manifest).get("raw_dir")
        if not raw_dir:
            raise InputError(
                f"{manifest.with_name('manifest.json')}: no raw_dir recorded; pass --raw"
            )
        raw = Path(raw_dir)
    return df, raw, file_sha256(manifest)


def shard_rows(n: int, size: int, shard: tuple[int, int] | None) -> range:
    """The rows shard (i, k) fills: the i-th of k contiguous blocks whose starts are page-aligned."""
    if shard is None:
        return range(n)
    i, k = shard
    unit = PAGE // math.gcd(size * size, PAGE)  # rows per page-aligned step
    steps = -(-n // unit)
    start = min(n, (steps * i // k) * unit)
    stop = min(n, (steps * (i + 1) // k) * unit)
    return range(start, stop)


def _npy_header(n: int, size: int) -> bytes:
    """A version-1.0 .npy header padded so the data starts at byte 4096 (a page boundary)."""
    d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {size}, {size}), }}"
    body = d.encode("latin1")
    pad = PAGE - 10 - len(body) - 1
    return b"\x93NUMPY\x01\x00" + (PAGE - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # POSIX lock: also works on NFS
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


class CacheBusy(CxrError):
    """Another run holds the cache directory."""


def _holders(lock_path: Path) -> list[dict]:
    """The runs named in the lock file, less those known dead (same host, pid gone)."""
    import socket

    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    here = socket.gethostname()
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            pid = int(rec["pid"])
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("host") == here:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue  # killed without a chance to clean up: its lock went with it
            except PermissionError:
                pass  # alive, another user's
        out.append(rec)
    return out


def _describe(holders: list[dict]) -> str:
    if not holders:
        return "another cxr preprocess (it has not said which yet)"
    parts = [
        f"{h.get('run', 'a run')}: pid {h.get('pid')} on {h.get('host', '?')}, "
        f"started {h.get('started', '?')}"
        for h in holders
    ]
    return "another cxr preprocess (" + "; ".join(parts) + ")"


@contextlib.contextmanager
def hold_cache(d: Path, run: str, shared: bool) -> Iterator[int]:
    """Hold cache directory `d` for a whole run: shared for shard writers, else exclusive.

    flock, so the kernel releases it when the process ends, even by SIGKILL. The holder writes a
    line naming itself (pid, host, start time, `run`) into the lock file for anyone refused.
    Yields the lock's file descriptor.
    """
    import fcntl
    import socket

    d.mkdir(parents=True, exist_ok=True)
    path = d / RUN_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(path)
            for _ in range(20):  # a holder that has just started writes its line at once
                if holders:
                    break
                time.sleep(0.05)
                holders = _holders(path)
            raise CacheBusy(
                f"{d}: in use by {_describe(holders)}; wait for it to finish or stop it"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "run": run,
        }
        if not shared:
            os.ftruncate(fd, 0)  # lines of runs that were killed: nobody else holds it now
        with open(path, "a", encoding="utf-8") as f:  # O_APPEND: shard lines never interleave
            f.write(json.dumps(me) + "\n")
        yield fd
    finally:
        # The last holder out leaves an empty file (a run that cannot take the lock at once
        # fails, so nothing waits on this conversion).
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
        os.close(fd)


def _shareable(path: Path) -> None:
    """Temporary files are created 0600; a cache is shared (several users, shards): umask decides."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CARRY_TMP = ".images.npy.carry"


def _wipe(d: Path) -> None:
    for name in (META, INDEX, IMAGES, KEYS, _CARRY_TMP):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    j = d / JOURNAL
    if j.is_dir():
        for p in j.iterdir():
            p.unlink()


def _write_keys(d: Path, keys: pl.DataFrame) -> None:
    with atomic_path(d / KEYS) as tmp:
        stored_keys(keys).write_parquet(tmp, statistics=False)
        _shareable(tmp)


def _write_meta(d: Path, meta: dict) -> None:
    write_text_atomic(d / META, json.dumps(meta, indent=2) + "\n")
    _shareable(d / META)


def _create(d: Path, meta: dict, keys: pl.DataFrame) -> None:
    """Fresh files for `meta`. cache.json is written last, so its presence means images.npy is
    complete in shape; a crash before that leaves files the next run recreates."""
    n, size = meta["n"], meta["size"]
    with atomic_path(d / IMAGES) as tmp, open(tmp, "wb") as f:
        f.write(_npy_header(n, size))
        f.truncate(PAGE + n * size * size)  # sparse: zeros until written
        f.flush()
        os.fsync(f.fileno())
        _shareable(tmp)
    _write_keys(d, keys)
    (d / JOURNAL).mkdir(exist_ok=True)
    _write_meta(d, meta)
    _fsync_dir(d)


def _same_images(old: dict, meta: dict) -> bool:
    if "images_sha256" in old:
        return old["images_sha256"] == meta["images_sha256"]
    # Written before the key existed: keyed on the manifest file's bytes.
    return old.get("manifest_sha256") == meta["manifest_sha256"] and old.get("n") == meta["n"]


def open_or_create(
    d: Path,
    meta: dict,
    keys: pl.DataFrame,
    force: bool,
    shard: tuple[int, int] | None = None,
) -> tuple[dict, bool, int]:
    """Open the cache of `meta`'s image set, creating it if absent; (meta on disk, created,
    rows carried over).

    A cache of the same image set is reused as it is (whatever else changed in the manifest). One
    of another image set is laid out anew for the new set, keeping the decoded rows of the images
    both share (`carry_over`); only a full build does that, shards refuse. Another size or method
    is refused unless `force`, which rebuilds from nothing.
    """
    d.mkdir(parents=True, exist_ok=True)
    with _locked(d):
        meta_path = d / META
        if meta_path.is_file() and not force:
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            for key, what in (("size", "size"), ("method", "method")):
                if old.get(key) != meta[key]:
                    raise CxrError(
                        f"{d}: cache was built with another {what} "
                        f"({old.get(key)!r} != {meta[key]!r}); use --force to rebuild it"
                    )
            if (d / IMAGES).is_file():
                if _same_images(old, meta):
                    if "images_sha256" not in old or not (d / KEYS).is_file():
                        _write_keys(d, keys)  # an older cache: record what it holds
                        old = {**old, "images_sha256": meta["images_sha256"]}
                        _write_meta(d, old)
                    return old, False, 0
                if shard is not None:
                    size = meta["size"]
                    raise CxrError(
                        f"{d}: the manifest's images differ from the cache's; run `cxr preprocess "
                        f"--size {size}` once without --shard (it keeps the images both hold and "
                        "decodes the others), then the shards"
                    )
                if (d / KEYS).is_file():
                    return meta, True, carry_over(d, meta, keys)
        _wipe(d)
        _create(d, meta, keys)
        return meta, True, 0


def carry_over(d: Path, meta: dict, keys: pl.DataFrame) -> int:
    """Lay the cache out for the image set `keys`, copying the decoded rows of every image the
    old set also holds (same dicom_id and image_path); returns how many were kept.

    The new images.npy is filled under a temporary name while the old cache stays whole. Then the
    old cache.json goes first, so a kill during the swap leaves no cache.json and the next run
    rebuilds from nothing rather than mixing the two layouts; the new cache.json comes last.
    """
    old_keys = pl.read_parquet(d / KEYS).select("dicom_id", "image_path")
    done, errors = read_journal(d, old_keys.height)
    ok = done & np.array([e is None for e in errors], dtype=bool)
    pairs = (
        stored_keys(keys)
        .with_row_index("new_row")
        .join(
            old_keys.with_row_index("old_row").filter(pl.Series(ok)),
            on=["dicom_id", "image_path"],
            how="inner",
        )
        .sort("old_row")  # read the old file forwards
    )
    new_rows = pairs["new_row"].to_numpy().astype(np.int64)
    old_rows = pairs["old_row"].to_numpy().astype(np.int64)
    n, size = meta["n"], meta["size"]
    tmp = d / _CARRY_TMP
    with open(tmp, "wb") as f:
        f.write(_npy_header(n, size))
        f.truncate(PAGE + n * size * size)
    if len(new_rows):
        old_images = np.load(d / IMAGES, mmap_mode="r")
        out = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=PAGE, shape=(n, size, size))
        step = 1024
        for i in range(0, len(new_rows), step):
            out[new_rows[i : i + step]] = old_images[old_rows[i : i + step]]
        out.flush()
        del out, old_images
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    _shareable(tmp)

    (d / META).unlink()
    with contextlib.suppress(FileNotFoundError):
        (d / INDEX).unlink()
    journal = d / JOURNAL
    journal.mkdir(exist_ok=True)
    for p in journal.iterdir():
        p.unlink()
    os.replace(tmp, d / IMAGES)
    _write_keys(d, keys)
    if len(new_rows):
        rows = np.sort(new_rows).tolist()
        record = journal / f"{time.time_ns():020d}-carried.jsonl"
        with open(record, "w", encoding="utf-8") as f:
            for i in range(0, len(rows), 4096):
                part = rows[i : i + 4096]
                f.write(json.dumps({"rows": part, "errors": [None] * len(part)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    _write_meta(d, meta)
    _fsync_dir(d)
    return len(new_rows)


def read_journal(d: Path, n: int) -> tuple[np.ndarray, list[str | None]]:
    """(done mask, error per row) from every journal file. A row is ok if any record says so."""
    done = np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    errors: list[str | None] = [None] * n
    j = d / JOURNAL
    files = sorted(j.glob("*.jsonl")) if j.is_dir() else []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn by a kill: that chunk will be redone
                try:
                    rec = json.loads(line)
                    rows, errs = rec["rows"], rec["errors"]
                except (ValueError, KeyError, TypeError):
                    continue
                for r, e in zip(rows, errs, strict=False):
                    if not 0 <= r < n:
                        continue
                    done[r] = True
                    if e is None:
                        ok[r] = True
                        errors[r] = None
                    elif not ok[r]:
                        errors[r] = e
    return done, errors


def write_index(d: Path, dicom_ids: pl.Series, errors: list[str | None]) -> None:
    index = pl.DataFrame(
        {
            "dicom_id": dicom_ids,
            "row": np.arange(len(errors), dtype=np.int64),
            "ok": [e is None for e in errors],
            "error": errors,
        },
        schema=INDEX_SCHEMA,
    )
    with atomic_path(d / INDEX) as tmp:
        index.write_parquet(tmp, statistics=False)
        _shareable(tmp)


# Worker side: each process maps images.npy once, read-write.
_worker: dict = {}


def _init_worker(images_path: str, size: int) -> None:
    _worker["images"] = np.load(images_path, mmap_mode="r+")
    _worker["size"] = size


def _init_pool_worker(images_path: str, size: int, lock_fd: int = -1) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if lock_fd >= 0:
        # A forked copy of the run lock: the parent's run holds the cache, not its workers.
        with contextlib.suppress(OSError):
            os.close(lock_fd)
    _init_worker(images_path, size)


def _process_chunk(task: list[tuple[int, str]]) -> tuple[list[int], list[str | None]]:
    from cxr.imaging.images import ImageReadError, load_fitted

    images, size = _worker["images"], _worker["size"]
    rows, errors = [], []
    for row, path in task:
        try:
            images[row] = load_fitted(path, size)
            errors.append(None)
        except ImageReadError as exc:
            images[row] = 0  # failed rows are zeros, whatever an earlier run left there
            errors.append(exc.reason)
        rows.append(row)
    images.flush()  # msync: the pixels are on disk before the parent journals the chunk
    return rows, errors


class Journal:
    """This run's append-only journal file; each record is fsynced before it counts."""

    def __init__(self, d: Path, shard: tuple[int, int] | None) -> None:
        tag = f"{shard[0]}of{shard[1]}" if shard else "all"
        stamp = time.time_ns()
        self.path = d / JOURNAL / f"{stamp:020d}-{tag}-{uuid.uuid4().hex[:8]}.jsonl"
        self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def append(self, rows: list[int], errors: list[str | None]) -> None:
        self.f.write(json.dumps({"rows": rows, "errors": errors}) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
        if self.path.stat().st_size == 0:
            self.path.unlink()


def build_cache(config: PreprocessConfig) -> BuildResult:
    """Fill the cache for `config.manifest` (the rows of `config.shard` only, if given)."""
    from cxr.imaging.images import METHOD

    t0 = time.perf_counter()
    if config.force and config.shard is not None:
        raise CxrError("--force cannot be combined with --shard (shards would wipe each other)")
    if config.size < 8:
        raise CxrError(f"--size {config.size}: too small")
    df, raw, sha = read_manifest_images(config.manifest, config.raw)
    n = df.height
    meta = {
        "size": config.size,
        "method": METHOD,
        "images_sha256": images_key(df),
        "manifest_sha256": sha,
        "n": n,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "raw_dir": str(raw),
    }
    d = config.cache_dir
    if config.shard is None:
        with hold_cache(d, "full build" + (" (--force)" if config.force else ""), False) as fd:
            return _build(config, d, df, raw, meta, t0, fd)
    with hold_cache(d, f"shard {config.shard[0]}/{config.shard[1]}", True) as fd:
        return _build(config, d, df, raw, meta, t0, fd)


def _build(config, d: Path, df: pl.DataFrame, raw: Path, meta: dict, t0: float, lock_fd: int):
    """build_cache's work, run while this process holds the cache (`lock_fd`)."""
    n = df.height
    _, _, carried = open_or_create(d, meta, df, config.force, config.shard)

    done, prev_errors = read_journal(d, n)
    mine = shard_rows(n, config.size, config.shard)
    mine_mask = np.zeros(n, dtype=bool)
    mine_mask[mine.start : mine.stop] = True
    # Failed rows are retried: a file fixed or downloaded since the last run gets filled.
    failed_before = done & np.array([e is not None for e in prev_errors], dtype=bool)
    todo_rows = np.flatnonzero(mine_mask & (~done | failed_before))
    skipped = int((mine_mask & done & ~failed_before).sum())

    paths = df["image_path"].to_list()
    workers = max(1, config.workers or os.cpu_count() or 1)
    # Small enough chunks that every worker gets several (load balance), capped for fewer flushes.
    chunk = max(1, min(config.chunk, -(-len(todo_rows) // (workers * 4))))
    tasks = [
        [(int(r), str(raw / paths[r])) for r in todo_rows[i : i + chunk]]
        for i in range(0, len(todo_rows), chunk)
    ]
    dicom_ids = df["dicom_id"]
    failed: list[tuple[str, str]] = []
    n_done = 0
    if tasks:
        n_done, failed = _run_tasks(d, tasks, config, workers, len(todo_rows), dicom_ids, lock_fd)

    done, errors = read_journal(d, n)
    complete = bool(done.all())
    if complete:
        write_index(d, dicom_ids, errors)
    return BuildResult(
        n=n,
        done=n_done - len(failed),
        skipped=skipped,
        failed=failed,
        pending=int((~done).sum()),
        complete=complete,
        seconds=time.perf_counter() - t0,
        carried=carried,
    )


def _run_tasks(
    d, tasks, config, workers, total, dicom_ids, lock_fd=-1
) -> tuple[int, list[tuple[str, str]]]:
    """Decode the tasks' rows (in `workers` processes); (rows attempted, failures)."""
    from rich.progress import TextColumn

    from cxr.core.progress import make_progress

    workers = min(workers, len(tasks))
    journal = Journal(d, config.shard)
    failed: list[tuple[str, str]] = []
    n_done = 0
    t0 = time.perf_counter()
    try:
        with make_progress(TextColumn("{task.fields[rate]}")) as progress:
            bar = progress.add_task(f"cache-{config.size}", total=total, rate="")

            def record(rows, errors):
                nonlocal n_done
                journal.append(rows, errors)
                n_done += len(rows)
                failed.extend((dicom_ids[r], e) for r, e in zip(rows, errors, strict=True) if e)
                rate = n_done / max(time.perf_counter() - t0, 1e-9)
                progress.update(bar, advance=len(rows), rate=f"{rate:.0f} img/s")

            if workers == 1:
                _init_worker(str(d / IMAGES), config.size)
                try:
                    for task in tasks:
                        record(*_process_chunk(task))
                finally:
                    _worker.clear()
            else:
                import multiprocessing

                ctx = multiprocessing.get_context()
                forked = ctx.get_start_method() == "fork"
                initargs = (str(d / IMAGES), config.size, lock_fd if forked else -1)
                with _sigint_ignored():  # until the workers are forked (they inherit it)
                    pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=initargs)
                with pool:
                    for rows, errors in pool.imap_unordered(_process_chunk, tasks):
                        record(rows, errors)
    finally:
        journal.close()
    failed.sort(key=lambda x: x[0])
    return n_done, failed


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while workers are forked, so none can die of a Ctrl-C before its
    initializer ignores it too; a Ctrl-C in that moment is dropped, the next one counts."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
