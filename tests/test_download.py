"""`cxr download`: planning logic, credentials, and both commands against a local fake PhysioNet.

The server runs on 127.0.0.1 in a thread (basic auth, Range, injectable faults) and counts every
request, so "fetches nothing" and "resumes with Range" are checked on the wire.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from cxr.cli import main
from cxr.core.errors import CxrError, InputError
from cxr.mimic import schema
from cxr.mimic.download import (
    METADATA_FILES,
    REPORTS_SUMS,
    Credentials,
    DownloadConfig,
    Fetcher,
    Item,
    _FileFailed,
    check_base_url,
    display_path,
    download_metadata,
    download_subset,
    parse_sha256sums,
    plan_items,
    resolve_credentials,
    split_present,
    unsafe_reason,
)

USER = "alice"
PASSWORD = "pw-Zx81-SECRET-q9"  # distinctive, so a leak is found by a plain substring search
SUBJECTS = (10000032, 10000764, 11000001)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing_text(files: dict[str, bytes]) -> str:
    return "".join(f"{sha(data)} {rel}\n" for rel, data in sorted(files.items()))


# --------------------------------------------------------------------------- a tiny raw tree


def make_tree(seed: int = 0):
    """(jpg project files, reports project files, manifest rows): a few patients, real layout."""
    rng = random.Random(seed)
    jpg: dict[str, bytes] = {}
    reports: dict[str, bytes] = {}
    rows = []
    for i, subject in enumerate(SUBJECTS):
        for j in range(2):
            study = 50000000 + 1000 * i + j
            for _k in range(1 + (i + j) % 2):
                dicom = "-".join(f"{rng.getrandbits(32):08x}" for _ in range(5))
                rel = schema.image_relpath(subject, study, dicom)
                jpg[rel] = b"\xff\xd8\xff" + rng.randbytes(rng.randint(20_000, 40_000))
                rows.append((dicom, study, subject, rel))
            reports[schema.report_relpaths(subject, study)[0]] = (
                f" FINAL REPORT\n IMPRESSION: study {study} is normal.\n".encode()
            )
    for name in (*schema.REQUIRED_CSVS, schema.NEGBIO_CSV):
        jpg[f"{name}.gz"] = gzip.compress(f"header,{name}\n1,2\n".encode(), mtime=0)
    return jpg, reports, rows


def write_manifest(path: Path, rows) -> Path:
    n = len(rows)
    data = {
        "dicom_id": [r[0] for r in rows],
        "study_id": pl.Series([r[1] for r in rows], dtype=pl.Int64),
        "subject_id": pl.Series([r[2] for r in rows], dtype=pl.Int64),
        "split": ["train"] * n,
        "view_position": ["PA"] * n,
        "image_path": [r[3] for r in rows],
        "report_path": pl.Series([None] * n, dtype=pl.String),
        **{label: pl.Series([1.0] * n, dtype=pl.Float32) for label in schema.LABELS},
        "rows": pl.Series([3056] * n, dtype=pl.Int64),
        "columns": pl.Series([2544] * n, dtype=pl.Int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(data).write_parquet(path)
    return path


# --------------------------------------------------------------------------- the fake server


class FakePhysioNet:
    """Serves /jpg/ and /reports/ trees with basic auth, Range and per-path faults.

    faults[url_path] is a list consumed one per request: "503", "slow", "reset" (half the body,
    then a TCP reset), "endless" (no Content-Length, then bytes until the client hangs up or
    ENDLESS_CAP is sent). deny[prefix] answers every request under it with that status (403...).
    `more` adds trees under other prefixes (another version of a project).
    """

    ENDLESS_CAP = 64 << 20

    def __init__(
        self,
        jpg: dict[str, bytes],
        reports: dict[str, bytes],
        more: dict[str, dict[str, bytes]] | None = None,
    ) -> None:
        self.files: dict[str, bytes] = {}
        self.endless_sent = 0
        trees = [("/jpg/", jpg), ("/reports/", reports), *(more or {}).items()]
        for prefix, tree in trees:
            for rel, data in tree.items():
                self.files[prefix + rel] = data
            self.files[prefix + schema.SHA256SUMS] = listing_text(tree).encode()
        self.faults: dict[str, list[str]] = {}
        self.deny: dict[str, int] = {}
        self.ignore_range = False
        self.slow_s = 1.5
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self._lock = threading.Lock()
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.good_auth = f"Basic {token}"

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]

    def start(self) -> None:
        server = self
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"


def _handler(fake: FakePhysioNet):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _empty(self, status: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            path = self.path
            rng = self.headers.get("Range")
            with fake._lock:
                fake.log.append((path, rng))
                queue = fake.faults.get(path)
                fault = queue.pop(0) if queue else None
            if self.headers.get("Authorization") != fake.good_auth:
                return self._empty(401, {"WWW-Authenticate": 'Basic realm="PhysioNet"'})
            for prefix, status in fake.deny.items():
                if path.startswith(prefix):
                    return self._empty(status)
            if fault == "503":
                return self._empty(503, {"Retry-After": "0"})
            if fault == "slow":
                time.sleep(fake.slow_s)
            if fault == "endless":
                # A close-delimited body that never ends: no Content-Length, no chunking.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                block = b"\0" * 65536
                try:
                    while fake.endless_sent < fake.ENDLESS_CAP:
                        self.wfile.write(block)
                        fake.endless_sent += len(block)
                except OSError:
                    pass
                return
            data = fake.files.get(path)
            if data is None:
                return self._empty(404)
            start = 0
            if rng and not fake.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            try:
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "reset":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(0.2)  # let the client read the first half before the reset
                    # SO_LINGER 0: close with a TCP reset, as a dropped connection looks.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout test)
                self.close_connection = True

    return Handler


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def tree():
    return make_tree()


@pytest.fixture
def server(tree):
    jpg, reports, _ = tree
    fake = FakePhysioNet(jpg, reports)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def credentials_env(monkeypatch, tmp_path):
    # Never read the real ~/.netrc; credentials come from the environment unless a test says so.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)


@pytest.fixture
def fast_cfg(server, tmp_path, tree):
    _, _, rows = tree
    return DownloadConfig(
        dest=tmp_path / "raw",
        base_url=server.url("/jpg/"),
        reports_base_url=server.url("/reports/"),
        manifest=write_manifest(tmp_path / "processed" / "manifest.parquet", rows),
        workers=4,
        retries=3,
        backoff_s=0.01,
        backoff_max_s=0.05,
        connect_timeout_s=2.0,
        read_timeout_s=0.5,
        chunk_bytes=4096,
    )


def assert_no_secret(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def assert_clean(dest: Path, expected: dict[str, bytes]) -> None:
    """No .part and no file whose bytes differ from what the listing promised."""
    assert not list(dest.rglob("*.part"))
    assert not list(dest.rglob("*.tmp"))
    for path in dest.rglob("*"):
        if path.is_file() and path.name not in (schema.SHA256SUMS, REPORTS_SUMS):
            rel = path.relative_to(dest).as_posix()
            assert rel in expected, rel
            assert path.read_bytes() == expected[rel], rel


def cli(data_dir: Path, *args: str) -> int:
    return main(["--data-dir", str(data_dir), "download", *args])


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("relpath", "ok"),
    [
        ("files/p10/p10000032/s50414267/0a-b.jpg", True),
        ("files/p10/p10000032/s50414267.txt", True),
        ("mimic-cxr-2.0.0-chexpert.csv.gz", True),
        ("SHA256SUMS.txt", True),
        ("../evil.txt", False),
        ("files/../../evil.txt", False),
        ("/etc/passwd", False),
        ("files\\p10\\x.jpg", False),
        ("files//x.jpg", False),
        ("files/./x.jpg", False),
        ("files/x.jpg/", False),
        ("files/x y.jpg", False),
        ("files/x;rm.jpg", False),
        ("files/é.jpg", False),
        ("C:/x.jpg", False),
        ("other/x.jpg", False),
        ("unknown-top-level.txt", False),
        ("files", False),
        ("", False),
    ],
)
def test_unsafe_reason(relpath, ok):
    assert (unsafe_reason(relpath) is None) == ok


def test_parse_sha256sums_accepts_the_format_and_refuses_unsafe_entries():
    h = "a" * 64
    text = (
        f"{h} files/p10/p10000032/s50414267/x.jpg\n"
        f"{'B' * 64} *mimic-cxr-2.0.0-split.csv.gz\r\n"
        f"{h} ../outside.txt\n"
        f"{h} /abs/path.txt\n"
        "not a checksum line\n\n"
    )
    listing = parse_sha256sums(text)
    assert listing.entries == {
        "files/p10/p10000032/s50414267/x.jpg": h,
        "mimic-cxr-2.0.0-split.csv.gz": "b" * 64,
    }
    refused = dict(listing.refused)
    assert set(refused) == {"../outside.txt", "/abs/path.txt", "line 5"}
    kept = parse_sha256sums(text, keep={"mimic-cxr-2.0.0-split.csv.gz"})
    assert list(kept.entries) == ["mimic-cxr-2.0.0-split.csv.gz"]
    with pytest.raises(InputError, match="not a checksum listing"):
        parse_sha256sums("<html><body>Login</body></html>\n", "SHA256SUMS.txt")


def test_plan_items_masks_subject_and_reports_unlisted_and_unsafe():
    listing = {"files/p10/p10000032/s50000000/a.jpg": "c" * 64}
    items, failed = plan_items(
        [
            "files/p10/p10000032/s50000000/a.jpg",
            "files/p10/p10000032/s50000000/a.jpg",
            "files/p10/p10000032/s50000000/b.jpg",
            "../x.jpg",
        ],
        listing,
        "https://example.org/base/",
        "MIMIC-CXR-JPG",
        "SHA256SUMS.txt",
    )
    assert [it.url for it in items] == [
        "https://example.org/base/files/p10/p10000032/s50000000/a.jpg"
    ]
    assert [f[1] for f in failed] == [
        "not listed in SHA256SUMS.txt",
        "refused: " + unsafe_reason("../x.jpg"),
    ]
    assert "10000032" not in str(failed)
    assert display_path("files/p10/p10000032/s50000000.txt") == "files/p10/p********/s50000000.txt"


def test_split_present_skips_only_right_files(tmp_path):
    good, bad = b"good", b"bad"
    (tmp_path / "files").mkdir()
    (tmp_path / "files/a.jpg").write_bytes(good)
    (tmp_path / "files/b.jpg").write_bytes(bad)
    listing = {f"files/{n}.jpg": sha(good) for n in "abc"}
    items, _ = plan_items(sorted(listing), listing, "https://h/", "P", "S")
    to_fetch, skipped = split_present(items, tmp_path, workers=2)
    assert [it.relpath for it in skipped] == ["files/a.jpg"]
    assert [it.relpath for it in to_fetch] == ["files/b.jpg", "files/c.jpg"]


def test_check_base_url():
    assert check_base_url("https://physionet.org/files/x/2.0.0") == (
        "https://physionet.org/files/x/2.0.0/"
    )
    for url in (
        "http://127.0.0.1:8000/a/",
        "http://127.5.0.1/",
        "http://[::1]:80/",
        "http://localhost/",
    ):
        assert check_base_url(url).startswith("http://")
    with pytest.raises(CxrError, match="not https"):
        check_base_url("http://physionet.org/files/")
    with pytest.raises(CxrError, match="not https"):
        check_base_url("ftp://127.0.0.1/")
    with pytest.raises(CxrError) as exc:
        check_base_url(f"https://{USER}:{PASSWORD}@physionet.org/")
    assert PASSWORD not in str(exc.value)


def test_credentials_env_then_netrc_then_error(tmp_path):
    env = {"PHYSIONET_USERNAME": "u", "PHYSIONET_PASSWORD": "p"}
    c = resolve_credentials("https://physionet.org/", env=env, interactive=False)
    assert (c.username, c.password, c.source) == ("u", "p", "environment")
    assert "password" not in repr(c)
    rc = tmp_path / "netrc"
    rc.write_text(f"machine physionet.org login nu password {PASSWORD}\n")
    rc.chmod(0o600)
    c = resolve_credentials("https://physionet.org/x/", env={}, netrc_path=rc, interactive=False)
    assert (c.username, c.password) == ("nu", PASSWORD)
    assert PASSWORD not in repr(c)
    # the base URL's own host wins over physionet.org
    rc.write_text(
        f"machine physionet.org login nu password {PASSWORD}\nmachine 127.0.0.1 login lo password x\n"
    )
    c = resolve_credentials("http://127.0.0.1:9/", env={}, netrc_path=rc, interactive=False)
    assert c.username == "lo"
    with pytest.raises(CxrError, match="no PhysioNet credentials"):
        resolve_credentials(
            "https://physionet.org/", env={}, netrc_path=tmp_path / "none", interactive=False
        )
    rc.write_text(f"machine physionet.org login nu password {PASSWORD} bogus\n")
    with pytest.raises(CxrError) as exc:
        resolve_credentials("https://physionet.org/", env={}, netrc_path=rc, interactive=False)
    assert PASSWORD not in str(exc.value) and "bogus" not in str(exc.value)


def test_download_modules_do_not_import_torch():
    code = (
        "import sys, cxr.mimic.download, cxr.commands.download, requests, polars; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- against the server


def test_metadata_then_second_run_fetches_nothing(server, tree, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    jpg, _, _ = tree
    base = server.url("/jpg/")
    assert cli(tmp_path, "metadata", "--base-url", base) == 0
    dest = tmp_path / "raw"
    for name in METADATA_FILES:
        assert (dest / name).read_bytes() == jpg[name]
    assert (dest / schema.SHA256SUMS).is_file()
    assert not (dest / f"{schema.NEGBIO_CSV}.gz").exists()  # only the three the pipeline needs
    assert server.log[0][0] == "/jpg/SHA256SUMS.txt"  # the listing first
    assert len(server.log) == 4
    server.log.clear()
    assert cli(tmp_path, "metadata", "--base-url", base) == 0
    # The listing is fetched again (a local one is never trusted), nothing else.
    assert server.log == [("/jpg/SHA256SUMS.txt", None)]
    out = capsys.readouterr()
    assert "3 already present" in out.out
    assert_clean(dest, jpg)
    assert_no_secret(tmp_path, out.out, out.err, caplog.text)


def test_subset_survives_faults_and_second_run_fetches_nothing(
    server, tree, fast_cfg, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    jpg, reports, rows = tree
    images = [r[3] for r in rows]
    server.faults = {
        "/jpg/" + images[0]: ["reset"],
        "/jpg/" + images[1]: ["503", "503"],
        "/jpg/" + images[2]: ["slow"],
        "/reports/" + next(iter(reports)): ["503"],
    }
    summary = download_subset(fast_cfg)
    assert summary.failed == [], summary.failed
    assert summary.fetched == len(images) + len(reports)
    dest = fast_cfg.dest
    expected = {**{k: jpg[k] for k in images}, **reports}
    for rel, data in expected.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / REPORTS_SUMS).is_file()
    assert_clean(dest, expected)
    # the reset file was resumed from where the connection dropped, not refetched from 0
    ranges = server.requests_for("/jpg/" + images[0])
    assert ranges[0] is None and ranges[1] is not None
    # (whole chunks written before the reset are kept; a torn last chunk is fetched again)
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(jpg[images[0]]) // 2
    assert len(server.requests_for("/jpg/" + images[1])) == 3
    assert len(server.requests_for("/jpg/" + images[2])) == 2
    # nothing but the manifest's files was fetched
    fetched = {p for p, _ in server.log}
    assert fetched == {"/jpg/SHA256SUMS.txt", "/reports/SHA256SUMS.txt"} | {
        "/jpg/" + i for i in images
    } | {"/reports/" + r for r in reports}
    server.log.clear()
    again = download_subset(fast_cfg)
    assert sorted(p for p, _ in server.log) == ["/jpg/SHA256SUMS.txt", "/reports/SHA256SUMS.txt"]
    assert (again.fetched, again.skipped, again.failed) == (0, len(expected), [])
    assert_no_secret(tmp_path, caplog.text)


def test_interrupted_run_resumes_with_range(server, tree, fast_cfg):
    jpg, _, rows = tree
    rel = rows[0][3]
    data = jpg[rel]
    part = fast_cfg.dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    half = len(data) // 2
    part.write_bytes(data[:half])
    summary = download_subset(fast_cfg)
    assert summary.failed == []
    assert server.requests_for("/jpg/" + rel) == [f"bytes={half}-"]
    assert (fast_cfg.dest / rel).read_bytes() == data
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file(server, tree, fast_cfg):
    jpg, _, rows = tree
    rel = rows[0][3]
    data = jpg[rel]
    part = fast_cfg.dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])
    server.ignore_range = True
    assert download_subset(fast_cfg).failed == []
    assert (fast_cfg.dest / rel).read_bytes() == data


def test_stale_part_with_wrong_bytes_is_replaced(server, tree, fast_cfg):
    jpg, _, rows = tree
    rel = rows[0][3]
    part = fast_cfg.dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 10)
    assert download_subset(fast_cfg).failed == []
    assert (fast_cfg.dest / rel).read_bytes() == jpg[rel]
    assert server.requests_for("/jpg/" + rel) == ["bytes=70-", None]


def test_checksum_mismatch_is_fetched_twice_then_reported(server, tree, fast_cfg, tmp_path, capsys):
    jpg, reports, rows = tree
    rel = rows[0][3]
    server.files["/jpg/" + rel] = b"tampered" + jpg[rel][8:]
    code = cli(
        tmp_path,
        "subset",
        "--base-url",
        fast_cfg.base_url,
        "--reports-base-url",
        fast_cfg.reports_base_url,
        "--workers",
        "3",
    )
    assert code == 1
    assert len(server.requests_for("/jpg/" + rel)) == 2
    dest = tmp_path / "raw"
    assert not (dest / rel).exists()
    err = capsys.readouterr().err
    assert "checksum mismatch" in err
    assert display_path(rel) in err
    for subject in SUBJECTS:  # subject_id never printed
        assert str(subject) not in err
    expected = {**{r[3]: jpg[r[3]] for r in rows}, **reports}
    assert_clean(dest, expected)


def test_retries_are_bounded(server, tree, fast_cfg):
    _, _, rows = tree
    rel = rows[0][3]
    server.faults["/jpg/" + rel] = ["503"] * 50
    t0 = time.monotonic()
    summary = download_subset(fast_cfg)
    assert time.monotonic() - t0 < 10
    assert len(server.requests_for("/jpg/" + rel)) == fast_cfg.retries + 1
    assert summary.failed == [(display_path(rel), "gave up after 4 tries: HTTP 503")]
    assert not (fast_cfg.dest / rel).exists()


def test_wrong_credentials_give_one_clear_line(server, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = PASSWORD + "-wrong"
    monkeypatch.setenv("PHYSIONET_PASSWORD", wrong)
    assert cli(tmp_path, "metadata", "--base-url", server.url("/jpg/")) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "credentials" in err and "MIMIC-CXR-JPG" in err
    assert len(err.strip().splitlines()) == 1
    assert wrong not in err and wrong not in caplog.text
    assert not list((tmp_path / "raw").rglob("*")) if (tmp_path / "raw").exists() else True
    with pytest.raises(CxrError) as exc:  # the API's exception text, not only the CLI's line
        download_metadata(DownloadConfig(dest=tmp_path / "raw", base_url=server.url("/jpg/")))
    assert wrong not in str(exc.value) and wrong not in repr(exc.value)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert wrong.encode() not in path.read_bytes()


def test_wrong_credentials_during_subset_stop_that_project(server, tree, fast_cfg):
    # The listing is served, the files answer 401: the first 401 comes on a file.
    server.deny["/jpg/files/"] = 401
    summary = download_subset(DownloadConfig(**{**fast_cfg.__dict__, "reports": False}))
    assert summary.failed and all("HTTP 401" in why for _, why in summary.failed)
    # one 401 per worker at most, not one per file
    files = [p for p, _ in server.log if p.startswith("/jpg/files/")]
    assert 0 < len(files) <= fast_cfg.workers
    assert not list(fast_cfg.dest.rglob("*.jpg"))


def test_403_names_the_project_and_the_agreement(server, tree, fast_cfg, tmp_path, capsys):
    jpg, _, rows = tree
    server.deny["/reports/"] = 403
    code = cli(
        tmp_path,
        "subset",
        "--base-url",
        fast_cfg.base_url,
        "--reports-base-url",
        fast_cfg.reports_base_url,
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "MIMIC-CXR " in err and "data use agreement" in err
    # --no-reports gets the images without MIMIC-CXR access
    assert cli(tmp_path, "subset", "--base-url", fast_cfg.base_url, "--no-reports") == 0
    for r in rows:
        assert (tmp_path / "raw" / r[3]).read_bytes() == jpg[r[3]]


def test_unsafe_listing_and_manifest_entries_are_refused(server, tree, tmp_path, capsys):
    jpg, reports, rows = tree
    bad = b"evil"
    listing = server.files["/jpg/SHA256SUMS.txt"].decode()
    listing += f"{sha(bad)} ../evil.txt\n{sha(bad)} /tmp/abs-evil.txt\n"
    server.files["/jpg/SHA256SUMS.txt"] = listing.encode()
    server.files["/evil.txt"] = bad
    bad_rows = [*rows, ("x", 50000000, 10000032, "../evil.txt")]
    write_manifest(tmp_path / "processed" / "manifest.parquet", bad_rows)
    base = server.url("/jpg/")
    assert cli(tmp_path, "metadata", "--base-url", base) == 0
    err = capsys.readouterr().err
    assert "../evil.txt" in err and "/tmp/abs-evil.txt" in err and "refused" in err
    code = cli(
        tmp_path, "subset", "--base-url", base, "--reports-base-url", server.url("/reports/")
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "../evil.txt: refused" in err
    assert not (tmp_path / "evil.txt").exists()
    assert "/evil.txt" not in {p for p, _ in server.log}
    assert_clean(tmp_path / "raw", {**jpg, **reports})


def test_plain_http_to_a_remote_host_is_refused(tmp_path, capsys):
    assert cli(tmp_path, "metadata", "--base-url", "http://physionet.org/files/x/") == 1
    assert "not https" in capsys.readouterr().err


def test_missing_manifest_is_one_line(tmp_path, capsys):
    assert cli(tmp_path, "subset", "--base-url", "http://127.0.0.1:9/") == 1
    err = capsys.readouterr().err
    assert "manifest not found" in err and len(err.strip().splitlines()) == 1


def test_rerun_with_everything_present_fetches_only_the_listings(server, tree, fast_cfg):
    assert download_subset(fast_cfg).failed == []
    server.log.clear()
    asked = []

    def creds():
        asked.append(1)
        return Credentials(USER, PASSWORD, "test")

    again = download_subset(fast_cfg, Fetcher(fast_cfg, credentials=creds))
    assert again.fetched == 0 and again.failed == [] and again.skipped > 0
    assert sorted(p for p, _ in server.log) == ["/jpg/SHA256SUMS.txt", "/reports/SHA256SUMS.txt"]
    assert asked == [1]


def test_netrc_credentials_work_end_to_end(server, tmp_path, monkeypatch):
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".netrc"
    rc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    os.chmod(rc, 0o600)
    assert cli(tmp_path / "d", "metadata", "--base-url", server.url("/jpg/")) == 0


def test_data_guide_steps_end_to_end(tmp_path, capsys):
    """metadata -> cxr manifest -> subset -> cxr verify, on the hand-made raw tables."""
    from rawtables import make_frames, write_raw

    frames = make_frames()
    src = write_raw(tmp_path / "src", frames)
    jpg = {p.name: p.read_bytes() for p in src.glob("*.csv.gz")}
    rep = {}
    for row in frames["split"].iter_rows(named=True):
        subject, study = int(row["subject_id"]), int(row["study_id"])
        jpg[schema.image_relpath(subject, study, row["dicom_id"])] = b"\xff\xd8" + os.urandom(500)
        rep[schema.report_relpaths(subject, study)[0]] = b" FINAL REPORT\n IMPRESSION: normal.\n"
    fake = FakePhysioNet(jpg, rep)
    fake.start()
    try:
        data = tmp_path / "data"
        urls = ["--base-url", fake.url("/jpg/")]
        assert cli(data, "metadata", *urls) == 0
        assert main(["--data-dir", str(data), "manifest"]) == 0
        assert cli(data, "subset", *urls, "--reports-base-url", fake.url("/reports/")) == 0
        manifest = data / "processed" / "manifest.parquet"
        assert main(["--data-dir", str(data), "verify", "--manifest", str(manifest)]) == 0
    finally:
        fake.stop()
    selected = set(pl.read_parquet(manifest)["image_path"].to_list())
    fetched_images = {p.removeprefix("/jpg/") for p, _ in fake.log if p.endswith(".jpg")}
    assert fetched_images == selected  # exactly the manifest's JPEGs, no other view
    assert len(selected) < sum(k.endswith(".jpg") for k in jpg)
    out = capsys.readouterr()
    assert_no_secret(tmp_path, out.out, out.err)


def test_http_debug_logs_mask_subject_folder(caplog):
    import logging

    from cxr.mimic.download import _mask_http_logs

    _mask_http_logs()
    logger = logging.getLogger("urllib3.connectionpool")
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        logger.debug('"GET %s HTTP/1.1" 200 10', "/files/p10/p10000032/s50414267/x.jpg")
    assert "10000032" not in caplog.text and "p********" in caplog.text


# --------------------------------------------------------------------------- local failures


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_broken_dest_symlink_fails_at_once_naming_the_path(server, tmp_path, capsys):
    dest = tmp_path / "raw"
    dest.symlink_to(tmp_path / "gone")
    t0 = time.monotonic()
    # The default retries and back-off: a local error must not go through them.
    code = cli(tmp_path, "metadata", "--dest", str(dest), "--base-url", server.url("/jpg/"))
    assert code == 1
    assert time.monotonic() - t0 < 3
    line = _one_line(capsys.readouterr().err)
    assert str(dest) in line and "broken symbolic link" in line
    assert "tries" not in line
    assert server.log == []


def test_dest_that_is_a_file_is_one_line(server, tmp_path, capsys):
    dest = tmp_path / "raw"
    dest.write_text("not a folder")
    code = cli(tmp_path, "metadata", "--dest", str(dest), "--base-url", server.url("/jpg/"))
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    assert str(dest) in line and "not a directory" in line
    assert server.log == [] and dest.read_text() == "not a folder"


def test_local_error_inside_dest_fails_each_file_at_once(server, tree, fast_cfg):
    """files/ is a regular file: no image can be written, and no request is made for one."""
    _, _, rows = tree
    fast_cfg.dest.mkdir(parents=True)
    (fast_cfg.dest / "files").write_text("x")
    t0 = time.monotonic()
    summary = download_subset(DownloadConfig(**{**fast_cfg.__dict__, "reports": False}))
    assert time.monotonic() - t0 < 3
    assert len(summary.failed) == len(rows)
    for shown, why in summary.failed:
        assert "not a directory" in why and "tries" not in why, why
        assert "p********" in why and "p********" in shown
        for subject in SUBJECTS:
            assert str(subject) not in why + shown
    assert [p for p, _ in server.log] == ["/jpg/SHA256SUMS.txt"]


def test_disk_full_fails_the_file_at_once(server, tree, fast_cfg):
    _, _, rows = tree
    rel = rows[0][3]
    part = fast_cfg.dest / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.symlink_to("/dev/full")  # every write: ENOSPC
    summary = download_subset(DownloadConfig(**{**fast_cfg.__dict__, "workers": 1}))
    why = dict(summary.failed)[display_path(rel)]
    assert "No space left on device" in why and "tries" not in why
    assert display_path(str(part)) in why
    assert len(server.requests_for("/jpg/" + rel)) == 1


# --------------------------------------------------------------------------- hostile servers


def test_endless_body_fails_the_file_at_once(server, tree, fast_cfg):
    _, _, rows = tree
    rel = rows[0][3]
    server.faults["/jpg/" + rel] = ["endless"] * 5
    cfg = DownloadConfig(**{**fast_cfg.__dict__, "max_file_bytes": 1 << 20, "reports": False})
    summary = download_subset(cfg)
    assert server.requests_for("/jpg/" + rel) == [None]  # neither retried nor fetched twice
    why = dict(summary.failed)[display_path(rel)]
    assert "more than" in why
    assert server.endless_sent < 16 << 20
    assert not (fast_cfg.dest / rel).exists()
    assert not (fast_cfg.dest / (rel + ".part")).exists()
    # the other files are unaffected
    assert summary.fetched == len(rows) - 1


def test_body_longer_than_the_listed_size_fails_at_once(server, tree, fast_cfg):
    jpg, _, rows = tree
    rel = rows[0][3]
    data = jpg[rel]
    fetcher = Fetcher(fast_cfg)
    fast_cfg.dest.mkdir(parents=True)
    item = Item(rel, server.url("/jpg/") + rel, sha(data), "MIMIC-CXR-JPG", size=len(data) - 1)
    with pytest.raises(_FileFailed, match="more than"):
        fetcher.fetch(item, fast_cfg.dest)
    assert len(server.requests_for("/jpg/" + rel)) == 1
    assert not (fast_cfg.dest / (rel + ".part")).exists()
    fetcher.close()


def test_group_readable_netrc_warns_in_one_line(tmp_path, capsys):
    rc = tmp_path / "netrc"
    rc.write_text(f"machine physionet.org login login-Qx7 password {PASSWORD}\n")
    rc.chmod(0o644)
    c = resolve_credentials("https://physionet.org/", env={}, netrc_path=rc, interactive=False)
    assert (c.username, c.password) == ("login-Qx7", PASSWORD)
    err = capsys.readouterr().err
    line = _one_line(err)
    assert str(rc) in line and "0644" in line and "chmod 600" in line
    assert PASSWORD not in err and "login-Qx7" not in err
    rc.chmod(0o600)
    resolve_credentials("https://physionet.org/", env={}, netrc_path=rc, interactive=False)
    assert capsys.readouterr().err == ""


def test_subset_accepts_a_report_at_the_guides_place(server, tree, fast_cfg):
    _, reports, _ = tree
    assert download_subset(fast_cfg).failed == []
    official = next(iter(reports))
    subject_dir, name = official.rsplit("/", 1)
    guide = f"{subject_dir}/{name[:-4]}/{name}"
    dest = fast_cfg.dest
    (dest / guide).parent.mkdir(parents=True, exist_ok=True)
    os.replace(dest / official, dest / guide)
    server.log.clear()
    again = download_subset(fast_cfg)
    assert again.failed == [] and again.fetched == 0
    assert server.requests_for("/reports/" + official) == []
    assert not (dest / official).exists()
    # A wrong file at the guide's place does not count: the report is fetched again.
    (dest / guide).write_bytes(b"wrong")
    third = download_subset(fast_cfg)
    assert third.fetched == 1 and (dest / official).read_bytes() == reports[official]


# --------------------------------------------------------------------------- versions


def _tree_2_1_0(jpg: dict[str, bytes]) -> dict[str, bytes]:
    labelled = ",".join(["study_id", *schema.LABELS]) + "\n50000000" + ",1.0" * 14 + "\n"
    return {**jpg, schema.RADIOLOGIST_CSV: labelled.encode()}


def test_metadata_of_version_2_1_0(tree, tmp_path, capsys):
    jpg, reports, rows = tree
    v210 = _tree_2_1_0(jpg)
    fake = FakePhysioNet(jpg, reports, more={"/jpg210/": v210})
    fake.start()
    try:
        base = fake.url("/jpg210/")
        assert cli(tmp_path, "metadata", "--version", "2.1.0", "--base-url", base) == 0
        dest = tmp_path / "raw"
        wanted = [*METADATA_FILES, schema.RADIOLOGIST_CSV]
        for name in wanted:
            assert (dest / name).read_bytes() == v210[name], name
        assert fake.log[0][0] == "/jpg210/SHA256SUMS.txt"
        assert sorted(p for p, _ in fake.log[1:]) == sorted(f"/jpg210/{n}" for n in wanted)
        # subset takes --version too; images are the same files
        write_manifest(tmp_path / "processed" / "manifest.parquet", rows)
        fake.log.clear()
        code = cli(tmp_path, "subset", "--version", "2.1.0", "--base-url", base, "--no-reports")
        assert code == 0
        assert {p for p, _ in fake.log} == {"/jpg210/SHA256SUMS.txt"} | {
            "/jpg210/" + r[3] for r in rows
        }
        # A tampered labelled test set is caught by the checksum like any file.
        fake.files["/jpg210/" + schema.RADIOLOGIST_CSV] = b"study_id\n1\n"
        (dest / schema.RADIOLOGIST_CSV).unlink()
        assert cli(tmp_path, "metadata", "--version", "2.1.0", "--base-url", base) == 1
        assert "checksum mismatch" in capsys.readouterr().err
    finally:
        fake.stop()


def test_version_picks_the_base_url_and_defaults_to_2_0_0(tmp_path):
    from cxr.mimic.download import jpg_base_url, metadata_files

    assert DownloadConfig(dest=tmp_path).version == "2.0.0"
    assert jpg_base_url("2.1.0") == "https://physionet.org/files/mimic-cxr-jpg/2.1.0/"
    assert jpg_base_url("2.0.0") == "https://physionet.org/files/mimic-cxr-jpg/2.0.0/"
    assert schema.RADIOLOGIST_CSV not in metadata_files("2.0.0")
    assert metadata_files("2.1.0") == (*METADATA_FILES, schema.RADIOLOGIST_CSV)
    with pytest.raises(SystemExit):
        cli(tmp_path, "metadata", "--version", "3.0.0")


# --------------------------------------------------------------------------- trust


def test_a_local_checksum_listing_is_never_trusted(server, tree, tmp_path, monkeypatch, capsys):
    """Forged CSVs with a matching forged SHA256SUMS.txt are not 'already present and verified'."""
    jpg, _, _ = tree
    dest = tmp_path / "raw"
    dest.mkdir()
    forged = {name: b"forged " + name.encode() for name in METADATA_FILES}
    for name, data in forged.items():
        (dest / name).write_bytes(data)
    (dest / schema.SHA256SUMS).write_text(listing_text(forged))
    base = server.url("/jpg/")
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    assert cli(tmp_path, "metadata", "--base-url", base) == 1
    out = capsys.readouterr()
    assert "already present" not in out.out and "no PhysioNet credentials" in out.err
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    assert cli(tmp_path, "metadata", "--base-url", base) == 0
    for name in METADATA_FILES:
        assert (dest / name).read_bytes() == jpg[name]
    assert (dest / schema.SHA256SUMS).read_bytes() == server.files["/jpg/SHA256SUMS.txt"]


def test_the_demo_tree_is_refused(server, tree, tmp_path, capsys, make_demo):
    _, _, rows = tree
    dest = tmp_path / "raw"
    make_demo(dest, n_patients=3, image_size=32)
    before = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    write_manifest(tmp_path / "processed" / "manifest.parquet", rows)
    for args in (("metadata",), ("subset", "--no-reports")):
        assert cli(tmp_path, *args, "--base-url", server.url("/jpg/")) == 1
        line = _one_line(capsys.readouterr().err)
        assert "cxr demo" in line and "--dest" in line and str(dest) in line
    assert server.log == []
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == before


# --------------------------------------------------------------------------- MIMIC-IV demographics


def _mimic_iv_tree(module: str = "hosp") -> dict[str, bytes]:
    """A MIMIC-IV file root: the two tables under `module`, and files the command never takes."""
    return {
        f"{module}/patients.csv.gz": gzip.compress(b"subject_id,gender\n10000032,F\n", mtime=0),
        f"{module}/admissions.csv.gz": gzip.compress(b"subject_id,race\n10000032,WHITE\n", mtime=0),
        f"{module}/labevents.csv.gz": b"not wanted",
        "icu/icustays.csv.gz": b"not wanted either",
        "LICENSE.txt": b"license",
    }


def test_demographics_fetch_the_two_tables_verified_into_mimiciv_hosp(tree, tmp_path, capsys):
    jpg, reports, _ = tree
    iv = _mimic_iv_tree()
    fake = FakePhysioNet(jpg, reports, more={"/iv31/": iv})
    fake.start()
    try:
        base = fake.url("/iv31/")
        assert cli(tmp_path, "demographics", "--base-url", base) == 0
        dest = tmp_path / "raw" / "mimiciv" / "3.1"
        for name in ("hosp/patients.csv.gz", "hosp/admissions.csv.gz"):
            assert (dest / name).read_bytes() == iv[name]
        assert (dest / schema.SHA256SUMS).is_file()
        assert fake.log[0][0] == "/iv31/SHA256SUMS.txt"  # the listing first, then only the two
        assert sorted(p for p, _ in fake.log[1:]) == [
            "/iv31/hosp/admissions.csv.gz",
            "/iv31/hosp/patients.csv.gz",
        ]
        out = capsys.readouterr()
        assert "fetched 2 files" in out.out and "refused" not in out.err  # icu/, LICENSE: fine
        fake.log.clear()
        assert cli(tmp_path, "demographics", "--base-url", base) == 0
        assert fake.log == [("/iv31/SHA256SUMS.txt", None)]  # present and right: not again
        # a tampered table is caught by the checksum like any file
        fake.files["/iv31/hosp/patients.csv.gz"] = b"forged"
        (dest / "hosp" / "patients.csv.gz").unlink()
        assert cli(tmp_path, "demographics", "--base-url", base) == 1
        assert "checksum mismatch" in capsys.readouterr().err
        assert_no_secret(tmp_path)
    finally:
        fake.stop()


def test_demographics_of_mimic_iv_1_0_come_from_core_and_land_in_hosp(tree, tmp_path):
    jpg, reports, _ = tree
    iv = _mimic_iv_tree("core")
    fake = FakePhysioNet(jpg, reports, more={"/iv10/": iv})
    fake.start()
    try:
        args = ("demographics", "--mimic-iv-version", "1.0", "--base-url", fake.url("/iv10/"))
        assert cli(tmp_path, *args) == 0
        dest = tmp_path / "raw" / "mimiciv" / "1.0" / "hosp"
        assert (dest / "patients.csv.gz").read_bytes() == iv["core/patients.csv.gz"]
        assert (dest / "admissions.csv.gz").read_bytes() == iv["core/admissions.csv.gz"]
    finally:
        fake.stop()


def test_demographics_403_names_mimic_iv_and_its_agreement(tree, tmp_path, capsys):
    jpg, reports, _ = tree
    fake = FakePhysioNet(jpg, reports, more={"/iv31/": _mimic_iv_tree()})
    fake.deny["/iv31/"] = 403
    fake.start()
    try:
        assert cli(tmp_path, "demographics", "--base-url", fake.url("/iv31/")) == 1
        line = _one_line(capsys.readouterr().err)
        assert "MIMIC-IV" in line and "https://physionet.org/content/mimiciv/3.1/" in line
        assert PASSWORD not in line
    finally:
        fake.stop()


def test_demographics_table_missing_from_the_listing_is_reported(tree, tmp_path, capsys):
    jpg, reports, _ = tree
    iv = {k: v for k, v in _mimic_iv_tree().items() if "admissions" not in k}
    fake = FakePhysioNet(jpg, reports, more={"/iv31/": iv})
    fake.start()
    try:
        assert cli(tmp_path, "demographics", "--base-url", fake.url("/iv31/")) == 1
        err = capsys.readouterr().err
        assert "hosp/admissions.csv.gz is not listed in SHA256SUMS.txt" in err
    finally:
        fake.stop()


def test_demographics_refuse_the_demo_tree_and_unknown_versions(
    server, tmp_path, capsys, make_demo
):
    from cxr.mimic.download import demographics_files, mimic_iv_base_url

    dest = tmp_path / "raw"
    make_demo(dest, n_patients=3, image_size=32)
    assert cli(tmp_path, "demographics", "--base-url", server.url("/jpg/")) == 1
    line = _one_line(capsys.readouterr().err)
    assert "cxr demo" in line and "--dest" in line
    assert server.log == []
    with pytest.raises(SystemExit):
        cli(tmp_path, "demographics", "--mimic-iv-version", "9.9")
    assert mimic_iv_base_url("2.2") == "https://physionet.org/files/mimiciv/2.2/"
    assert demographics_files("3.1") == (
        ("hosp/patients.csv.gz", "hosp/patients.csv.gz"),
        ("hosp/admissions.csv.gz", "hosp/admissions.csv.gz"),
    )
