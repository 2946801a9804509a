"""cxr.imaging.cache and `cxr preprocess`: build, resume, refuse, shard, and survive SIGKILL."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxr.cli import main
from cxr.core.errors import CxrError
from cxr.imaging.cache import PreprocessConfig, build_cache, load_cache, rows_for, shard_rows
from cxr.imaging.images import load_fitted
from xray_fixtures import make_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A data root with 40 small JPEGs and a manifest (never modified by tests: copy first)."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, 40)
    return root


@pytest.fixture
def data(dataset, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    info = root / "processed" / "manifest.json"
    info.write_text(json.dumps({"raw_dir": str(root / "raw")}))
    return root


def config(root: Path, **kw) -> PreprocessConfig:
    size = kw.pop("size", 32)
    return PreprocessConfig(
        manifest=root / "processed" / "manifest.parquet",
        cache_dir=root / "interim" / f"cache-{size}",
        size=size,
        workers=kw.pop("workers", 1),
        chunk=kw.pop("chunk", 4),
        **kw,
    )


def manifest_of(root: Path) -> pl.DataFrame:
    return pl.read_parquet(root / "processed" / "manifest.parquet")


def snapshot(cache_dir: Path) -> tuple[bytes, bytes]:
    return (cache_dir / "images.npy").read_bytes(), (cache_dir / "index.parquet").read_bytes()


def test_build_and_load(data):
    cfg = config(data)
    result = build_cache(cfg)
    assert (result.done, result.skipped, result.failed, result.complete) == (40, 0, [], True)
    cache = load_cache(cfg.cache_dir)
    m = manifest_of(data)
    assert cache.size == 32 and cache.images.shape == (40, 32, 32)
    assert cache.images.dtype == np.uint8 and not cache.images.flags.writeable
    assert cache.index.columns == ["dicom_id", "row", "ok", "error"]
    assert cache.index["dicom_id"].to_list() == m["dicom_id"].to_list()  # manifest order
    assert cache.index["row"].to_list() == list(range(40))
    assert cache.meta["method"].startswith("pillow-draft+") and cache.meta["n"] == 40
    assert len(cache.meta["manifest_sha256"]) == 64
    for row in (0, 17, 39):
        expected = load_fitted(data / "raw" / m["image_path"][row], 32)
        np.testing.assert_array_equal(cache.images[row], expected)
    ids = m["dicom_id"].to_list()
    np.testing.assert_array_equal(rows_for(cache, [ids[5], ids[2]]), [5, 2])
    with pytest.raises(CxrError, match="1 dicom_ids not in the cache"):
        rows_for(cache, [ids[0], "nope"])
    # the file is a plain .npy: numpy reads it without cxr
    np.testing.assert_array_equal(np.load(cfg.cache_dir / "images.npy"), cache.images)


def test_bad_files_are_recorded_not_fatal(data, capsys):
    m = manifest_of(data)
    raw = data / "raw"
    paths = m["image_path"].to_list()
    (raw / paths[1]).write_bytes(b"")  # zero bytes
    (raw / paths[2]).write_bytes((raw / paths[2]).read_bytes()[:300])  # truncated
    (raw / paths[3]).unlink()  # vanished between manifest and preprocess
    (raw / paths[4]).unlink()
    (raw / paths[4]).mkdir()  # a directory where a file should be
    from PIL import Image

    png = raw / paths[5]  # a PNG named .jpg loads
    Image.open(raw / paths[6]).save(png, format="PNG")
    rc = main(["--data-dir", str(data), "preprocess", "--size", "32", "--workers", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "36 decoded, 4 failed" in out  # failures are not counted as decoded
    assert "file not found" in out and "empty file (0 bytes)" in out
    assert "`cxr download subset` fetches the manifest's missing images" in out
    assert "1000000" not in out  # subject ids (in the paths) never printed
    cache = load_cache(data / "interim" / "cache-32")
    idx = cache.index
    assert idx["ok"].to_list() == [i not in (1, 2, 3, 4) for i in range(40)]
    errors = idx["error"].to_list()
    assert errors[1] == "empty file (0 bytes)"
    assert "truncated" in errors[2].lower()
    assert errors[3] == "file not found"
    assert "directory" in errors[4]
    assert all(not cache.images[r].any() for r in (1, 2, 3, 4))  # failed rows are zeros
    with pytest.raises(CxrError, match="1 failed to decode"):
        rows_for(cache, [m["dicom_id"][3]])

    # the missing file turns up: a rerun fills it (and only the failed rows are redone)
    (raw / paths[4]).rmdir()
    shutil.copy(raw / paths[0], raw / paths[4])
    result = build_cache(config(data))
    assert result.done == 1 and result.skipped == 36 and len(result.failed) == 3
    assert load_cache(data / "interim" / "cache-32").index["ok"][4]


def test_rerun_fills_only_missing(data):
    cfg = config(data)
    build_cache(cfg)
    reference = snapshot(cfg.cache_dir)
    # forget the last journal records, as if the run had been killed there
    journal = next((cfg.cache_dir / "journal").glob("*.jsonl"))
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:3]) + lines[3][:10])  # and a torn last line
    (cfg.cache_dir / "index.parquet").unlink()
    with pytest.raises(CxrError, match="incomplete"):
        load_cache(cfg.cache_dir)
    result = build_cache(cfg)
    assert (result.skipped, result.done) == (12, 28)
    assert snapshot(cfg.cache_dir) == reference
    again = build_cache(cfg)
    assert (again.done, again.skipped) == (0, 40)
    assert snapshot(cfg.cache_dir) == reference


def _decoded(monkeypatch) -> list[str]:
    """The paths the cache decodes from now on (in-process, one worker)."""
    import cxr.imaging.images as images

    seen: list[str] = []
    real = images.load_fitted
    monkeypatch.setattr(
        images, "load_fitted", lambda path, size: seen.append(path) or real(path, size)
    )
    return seen


def test_a_rewritten_manifest_with_the_same_images_keeps_its_cache(data, capsys, monkeypatch):
    """The cache is keyed on its (dicom_id, image_path) list, not on the manifest's bytes: the
    manifest rewritten with report sections and other label values still matches it."""
    from cxr.imaging.cache import holds_manifest

    args = ["--data-dir", str(data), "preprocess", "--size", "32", "--workers", "1"]
    assert main(args) == 0
    reference = snapshot(data / "interim" / "cache-32")
    m = manifest_of(data).with_columns(pl.lit("no acute process").alias("impression"))
    m.write_parquet(data / "processed" / "manifest.parquet")
    capsys.readouterr()
    seen = _decoded(monkeypatch)
    assert main(args) == 0
    assert "nothing to do, 40 already cached" in capsys.readouterr().out and seen == []
    assert snapshot(data / "interim" / "cache-32") == reference
    cache = load_cache(data / "interim" / "cache-32")
    assert holds_manifest(cache, data / "processed" / "manifest.parquet")
    from cxr.view.images import find_cache  # cxr view's thumbnails come from it too

    assert find_cache(data, data / "processed" / "manifest.parquet").dir == cache.dir
    m.head(39).write_parquet(data / "processed" / "manifest.parquet")
    assert not holds_manifest(cache, data / "processed" / "manifest.parquet")


def test_a_changed_image_set_decodes_only_the_images_the_cache_lacks(data, capsys, monkeypatch):
    args = ["--data-dir", str(data), "preprocess", "--size", "32", "--workers", "1"]
    full = manifest_of(data)
    fresh = config(data, size=32)
    build_cache(fresh)
    reference = load_cache(fresh.cache_dir).images[:].copy()
    shutil.rmtree(fresh.cache_dir)
    manifest = data / "processed" / "manifest.parquet"
    # a cache of 30 images, then a manifest of 10 of them and 10 others, in another order
    full.head(30).write_parquet(manifest)
    assert main(args) == 0
    changed = pl.concat([full.slice(30, 10), full.slice(10, 10)])
    changed.write_parquet(manifest)
    capsys.readouterr()
    seen = _decoded(monkeypatch)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "10 decoded, 0 failed" in out and "10 images kept from the cache" in out
    assert sorted(seen) == sorted(str(data / "raw" / p) for p in full["image_path"][30:40])
    cache = load_cache(fresh.cache_dir)
    assert cache.index["dicom_id"].to_list() == changed["dicom_id"].to_list()
    np.testing.assert_array_equal(cache.images[:10], reference[30:40])
    np.testing.assert_array_equal(cache.images[10:], reference[10:20])  # carried, byte-identical
    stored = pl.read_parquet(fresh.cache_dir / "keys.parquet")["image_path"].to_list()
    assert all("/p********/" in p for p in stored)  # no subject_id in the cache
    # shards do not carry a cache over: one full run first
    full.write_parquet(manifest)
    with pytest.raises(CxrError, match="once without --shard"):
        build_cache(config(data, size=32, shard=(0, 2)))
    # --force decodes everything again
    seen.clear()
    assert main([*args, "--force"]) == 0
    assert len(seen) == 40
    np.testing.assert_array_equal(load_cache(fresh.cache_dir).images[:], reference)


def test_a_kill_while_carrying_over_leaves_a_cache_the_next_run_rebuilds(data, monkeypatch):
    import cxr.imaging.cache as cache_mod

    full = manifest_of(data)
    manifest = data / "processed" / "manifest.parquet"
    build_cache(config(data))
    reference = snapshot(config(data).cache_dir)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    for step in ("_write_keys", "_write_meta"):  # after the old cache.json is gone
        full.head(20).write_parquet(manifest)
        with monkeypatch.context() as m:
            m.setattr(cache_mod, step, killed)
            with pytest.raises(KeyboardInterrupt):
                build_cache(config(data))
        with pytest.raises(CxrError):
            load_cache(config(data).cache_dir)  # never a mix of the two layouts
        full.write_parquet(manifest)
        result = build_cache(config(data))
        assert (result.done, result.carried) == (40, 0)  # rebuilt from nothing
        assert snapshot(config(data).cache_dir) == reference


def test_refuses_other_size_in_the_same_dir(data):
    build_cache(config(data))
    cfg = config(data, size=48)
    wrong = PreprocessConfig(**{**cfg.__dict__, "cache_dir": data / "interim" / "cache-32"})
    with pytest.raises(CxrError, match="another size"):
        build_cache(wrong)


def test_bad_manifest_exits_1(data, capsys):
    (data / "processed" / "manifest.parquet").write_text("not parquet")
    assert main(["--data-dir", str(data), "preprocess"]) == 1
    assert "not a readable parquet" in capsys.readouterr().err
    assert main(["--data-dir", str(data / "nowhere"), "preprocess"]) == 1
    assert main(["--data-dir", str(data), "preprocess", "--shard", "3/3"]) == 1


def test_shards_fill_one_cache(data):
    whole = config(data, size=48)
    build_cache(whole)
    reference = snapshot(whole.cache_dir)
    shutil.rmtree(whole.cache_dir)
    results = [build_cache(config(data, size=48, shard=(i, 3))) for i in (2, 0, 1)]
    assert [r.complete for r in results] == [False, False, True]  # the last writes the index
    assert sum(r.done for r in results) == 40
    assert snapshot(whole.cache_dir) == reference
    # blocks cover every row once and start on page boundaries
    rows = [shard_rows(1000, 48, (i, 7)) for i in range(7)]
    assert [r.start for r in rows[1:]] == [r.stop for r in rows[:-1]] and rows[-1].stop == 1000
    assert all((4096 + r.start * 48 * 48) % 4096 == 0 for r in rows)


def test_concurrent_shards_create_safely(data):
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "cxr", "--data-dir", str(data), "preprocess", "--size", "32"]
    procs = [
        subprocess.Popen([*cmd, "--shard", f"{i}/2", "--workers", "1"], env=env) for i in range(2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    subprocess.run([*cmd, "--workers", "1"], env=env, check=True, capture_output=True)
    cache = load_cache(data / "interim" / "cache-32")
    assert cache.index["ok"].all()
    m = manifest_of(data)
    expected = load_fitted(data / "raw" / m["image_path"][25], 32)
    np.testing.assert_array_equal(cache.images[25], expected)


def _records(cache_dir: Path) -> int:
    """Completed-chunk records in the journal so far."""
    journal = cache_dir / "journal"
    if not journal.is_dir():
        return -1
    return sum(p.read_bytes().count(b"\n") for p in journal.glob("*.jsonl"))


def _kill_when(cmd, env, ready, timeout=20.0) -> bool:
    """Start `cmd`, SIGKILL its process group as soon as `ready()` is true; True if it was killed."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.001)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the workers die too
    proc.wait()
    return killed


def _after(seconds: float):
    start = time.monotonic()
    return lambda: time.monotonic() - start > seconds


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_is_identical(tmp_path):
    """kill -9 `cxr preprocess` at many moments, rerun: byte-identical to an uninterrupted run."""
    root = tmp_path / "data"
    make_dataset(root, 240, size=(240, 200))
    (root / "raw" / manifest_of(root)["image_path"][7]).write_bytes(b"")  # one failure, too
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "cxr", "--data-dir", str(root), "preprocess", "--size", "128"]
    cmd += ["--workers", "2"]
    cache_dir = root / "interim" / "cache-128"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    reference = snapshot(cache_dir)

    rng = random.Random(0)
    for attempt in range(3):
        shutil.rmtree(cache_dir)
        kills = 0
        # during start-up, then the moment the cache files appear (creation), then mid-run after
        # a random number of chunks has been recorded, and at random times
        kills += _kill_when(cmd, env, _after(0.05 * (attempt + 1)))
        kills += _kill_when(cmd, env, lambda: (cache_dir / "cache.json").exists())
        for _ in range(2):
            target = _records(cache_dir) + rng.randint(1, 3)
            kills += _kill_when(cmd, env, lambda t=target: _records(cache_dir) >= t)
        kills += _kill_when(cmd, env, _after(rng.uniform(0.2, 0.8)))
        assert kills >= 3
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        assert snapshot(cache_dir) == reference, f"attempt {attempt}: differs after {kills} kills"


@pytest.mark.slow
def test_demo_manifest_to_cache(demo_raw, tmp_path):
    """The real chain: demo tree -> `cxr manifest` -> `cxr preprocess` -> rows for the manifest."""
    root = tmp_path / "data"
    manifest = root / "processed" / "manifest.parquet"
    assert main(["-q", "manifest", "--raw", str(demo_raw), "--out", str(manifest)]) == 0
    assert main(["-q", "--data-dir", str(root), "preprocess", "--size", "32"]) == 0
    cache = load_cache(root / "interim" / "cache-32")
    ids = pl.read_parquet(manifest)["dicom_id"]
    rows = rows_for(cache, ids)
    np.testing.assert_array_equal(rows, np.arange(len(ids)))
    assert cache.images[rows].mean() > 10  # real pixels, not padding


# -- one run at a time, shards together; Ctrl-C ---------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """240 JPEGs of 240 x 200: a run at 128 px takes long enough to be stopped mid-way."""
    root = tmp_path_factory.mktemp("big")
    make_dataset(root, 240, size=(240, 200))
    return root


def _copy(big: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(big, root)
    info = root / "processed" / "manifest.json"
    info.write_text(json.dumps({"raw_dir": str(root / "raw")}))
    return root


def _cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "cxr", "--data-dir", str(root), "preprocess", "--size", "128"]


def _stopped_holder(root: Path, *extra: str) -> subprocess.Popen:
    """A `cxr preprocess` started and stopped (SIGSTOP) once it has recorded some rows."""
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [*_cmd(root), "--workers", "1", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache_dir = root / "interim" / "cache-128"
    deadline = time.monotonic() + 60
    while _records(cache_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "the run ended before it could be stopped"
    return proc


def _resume(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_second_run_is_refused_while_one_builds_and_the_first_completes(big, tmp_path, capsys):
    """A second run (--force too) while one builds is refused: it would remove the running one's
    files under it (which then failed with a FileNotFoundError)."""
    root = _copy(big, tmp_path)
    first = _stopped_holder(root)
    try:
        argv = ["--data-dir", str(root), "preprocess", "--size", "128", "--workers", "1"]
        for extra in (["--force"], [], ["--shard", "1/2"]):
            assert main([*argv, *extra]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err
            assert "cache-128: in use by another cxr preprocess (full build" in err
            assert f"pid {first.pid} on " in err and ", started 20" in err
    finally:
        rc, err = _resume(first)
    assert rc == 0, err
    cache = load_cache(root / "interim" / "cache-128")
    assert cache.index["ok"].all()
    m = manifest_of(root)
    for row in (0, 119, 239):
        expected = load_fitted(root / "raw" / m["image_path"][row], 128)
        np.testing.assert_array_equal(cache.images[row], expected)
    # the lock went with the run: a rerun proceeds (nothing left to do)
    assert build_cache(config(root, size=128)).skipped == 240


def test_shards_hold_the_cache_together_but_never_with_a_full_build(big, tmp_path, capsys):
    root = _copy(big, tmp_path)
    shard0 = _stopped_holder(root, "--shard", "0/2")
    try:
        # a line left by a shard that was SIGKILLed: its pid is gone, so it is not named
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        lock = root / "interim" / "cache-128" / ".run.lock"
        with open(lock, "a") as f:
            host = json.loads(lock.read_text().splitlines()[0])["host"]
            f.write(json.dumps({"pid": dead.pid, "host": host, "run": "shard 1/2"}) + "\n")
        # another shard runs beside it, by design
        result = build_cache(config(root, size=128, shard=(1, 2)))
        assert result.done > 0 and not result.complete
        # a full build (forced or not) does not
        argv = ["--data-dir", str(root), "preprocess", "--size", "128", "--workers", "1"]
        for extra in ([], ["--force"]):
            assert main([*argv, *extra]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert f"(shard 0/2: pid {shard0.pid} on " in err and str(dead.pid) not in err
    finally:
        rc, err = _resume(shard0)
    assert rc == 0, err
    assert load_cache(root / "interim" / "cache-128").index["ok"].all()  # shard 0 finished it
    assert (root / "interim" / "cache-128" / ".run.lock").read_text() == ""


def test_building_in_process_leaves_ctrl_c_working(data):
    """With one worker the decoding runs in the calling process: it must not inherit what the
    pool's workers do with SIGINT."""
    handler = signal.getsignal(signal.SIGINT)
    build_cache(config(data, workers=1))
    build_cache(config(data, size=24, workers=2))
    assert signal.getsignal(signal.SIGINT) is handler


def test_ctrl_c_with_workers_is_one_line_and_leaves_a_resumable_cache(big, tmp_path):
    root = _copy(big, tmp_path)
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [*_cmd(root), "--workers", "2"]
    cache_dir = root / "interim" / "cache-128"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    reference = snapshot(cache_dir)
    shutil.rmtree(cache_dir)
    # Ctrl-C in a terminal signals the whole foreground process group: parent and workers
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while _records(cache_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    # The parent is held still so the run cannot finish before the Ctrl-C lands (on a busy
    # machine it could); the workers take the signal at once, the parent when it goes on.
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "the run ended before Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "cxr preprocess: interrupted" in err
    assert not (cache_dir / "index.parquet").exists()
    # the rerun resumes: it skips what was recorded and ends with the uninterrupted bytes
    rerun = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    assert "skipped as already cached" in rerun.stdout and " 0 skipped" not in rerun.stdout
    assert snapshot(cache_dir) == reference


def test_train_reads_a_cache_that_serves_its_size_else_names_the_command(data, monkeypatch):
    """`cxr preprocess` then a bare `cxr train`: train finds the cache preprocess built."""
    from cxr.commands.train import resolve_inputs
    from cxr.core.defaults import CACHE_SIZE, IMAGE_SIZE
    from cxr.core.errors import MissingInput
    from cxr.core.paths import DataPaths
    from cxr.imaging.cache import choose_cache
    from cxr.training.config import TrainConfig

    monkeypatch.chdir(data.parent)
    paths = DataPaths(Path(data.name))  # relative, as `--data-dir data` gives it
    manifest, interim = paths.manifest, paths.interim
    assert CACHE_SIZE >= IMAGE_SIZE  # the default cache serves the default model input
    # what `cxr preprocess` builds with no options, a default TrainConfig reads
    assert main(["--data-dir", str(paths.root), "preprocess", "--workers", "1"]) == 0
    cfg = resolve_inputs(TrainConfig(), paths)
    assert cfg.cache == str(data / "interim" / f"cache-{CACHE_SIZE}")
    assert cfg.manifest == str(data / "processed" / "manifest.parquet")  # absolute: from anywhere
    shutil.rmtree(interim / f"cache-{CACHE_SIZE}")

    build_cache(config(data, size=32))
    build_cache(config(data, size=48))
    assert choose_cache(interim, manifest, 24) == interim / "cache-32"  # the smallest that serves
    assert choose_cache(interim, manifest, 40) == interim / "cache-48"
    assert choose_cache(interim, manifest, 24, cache_size=48) == interim / "cache-48"
    for image_size, cache_size, command in (
        (64, 0, f"`cxr preprocess --size {CACHE_SIZE}` builds it"),
        (CACHE_SIZE + 8, 0, f"`cxr preprocess --size {CACHE_SIZE + 8}` builds it"),
        (24, 64, "`cxr preprocess --size 64` builds it"),
    ):
        with pytest.raises(MissingInput, match=command):
            choose_cache(interim, manifest, image_size, cache_size)
    # another image set: the smallest cache that would serve is the one to update
    manifest_of(data).head(30).write_parquet(manifest)
    with pytest.raises(MissingInput) as exc:
        choose_cache(interim, manifest, 24)
    assert "cache-32: another image set, cache-48: another image set" in str(exc.value)
    assert "`cxr preprocess --size 32` updates it, decoding only the images it lacks" in str(
        exc.value
    )
