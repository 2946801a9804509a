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
    DownloadConfig,
    Fetcher,
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
    then a TCP reset). deny[prefix] answers every request under it with that status (403...).
    """

    def __init__(self, jpg: dict[str, bytes], reports: dict[str, bytes]) -> None:
        self.files: dict[str, bytes] = {}
        for prefix, tree in (("/jpg/", jpg), ("/reports/", reports)):
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
    assert server.log == []
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
    assert server.log == []
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


def test_wrong_credentials_during_subset_stop_that_project(server, tree, fast_cfg, monkeypatch):
    # The listing is already here (from `metadata`), so the first 401 comes on a file.
    jpg, _, _ = tree
    fast_cfg.dest.mkdir(parents=True)
    (fast_cfg.dest / schema.SHA256SUMS).write_text(listing_text(jpg))
    monkeypatch.setenv("PHYSIONET_PASSWORD", "nope")
    summary = download_subset(DownloadConfig(**{**fast_cfg.__dict__, "reports": False}))
    assert summary.failed and all("HTTP 401" in why for _, why in summary.failed)
    # one 401 per worker at most, not one per file
    assert len(server.log) <= fast_cfg.workers
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


def test_nothing_to_fetch_needs_no_credentials(server, tree, fast_cfg, monkeypatch):
    assert download_subset(fast_cfg).failed == []
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    server.log.clear()
    fetcher = Fetcher(fast_cfg, credentials=lambda: pytest.fail("credentials asked for"))
    assert download_subset(fast_cfg, fetcher).skipped > 0
    assert server.log == []


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
