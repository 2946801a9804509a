"""`cxr embed`'s store: every manifest image once, failures recorded, resumable after SIGKILL,
the shared rows of a changed image set kept, another model's store refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _embed_fixtures import SQUARE, GridSource
from _eval_fixtures import make_data
from cxr.core.errors import InputError
from cxr.pretrained.embed import EmbedConfig, build_embeddings
from cxr.pretrained.embeddings import load_embeddings

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("embed") / "data")


def _cfg(fx, out: Path, **kw) -> EmbedConfig:
    return EmbedConfig(
        model="test:grid",
        manifest=fx.manifest,
        interim=fx.root / "interim",
        out=out,
        batch_size=4,
        device="cpu",
        **kw,
    )


def _expected(fx) -> tuple[list[str], np.ndarray, list[bool]]:
    """What the store must hold: the source's features of each manifest image, in order."""
    manifest = pl.read_parquet(fx.manifest)
    source = GridSource()
    rows, ok = [], []
    for rel in manifest["image_path"]:
        try:
            rows.append(source.embed(source.load(fx.raw / rel)[None])[0])
            ok.append(True)
        except Exception:
            rows.append(np.zeros(16, dtype=np.float32))
            ok.append(False)
    return manifest["dicom_id"].to_list(), np.stack(rows).astype(np.float16), ok


def test_store_holds_every_image_once_with_failures_recorded(data, tmp_path):
    out = tmp_path / "embed-grid"
    result = build_embeddings(_cfg(data, out), GridSource())
    ids, expected, ok = _expected(data)
    store = load_embeddings(out)
    assert store.vectors.dtype == np.float16 and store.vectors.shape == (len(ids), 16)
    assert store.index["dicom_id"].to_list() == ids
    assert store.index["ok"].to_list() == ok and not all(ok)  # the fixture's unreadable JPEG
    np.testing.assert_array_equal(np.asarray(store.vectors), expected)
    assert result.done == sum(ok) and len(result.failed) == 1 and result.skipped == 0
    meta = json.loads((out / "embed.json").read_text())
    assert meta["complete"] and meta["dim"] == 16 and meta["n"] == len(ids)
    # The keys never carry the patient folder of the image path.
    keys = pl.read_parquet(out / "keys.parquet")
    assert not any(str(s) in "".join(keys["image_path"]) for s in data.subject_ids)
    # A second run has nothing to do.
    again = build_embeddings(_cfg(data, out), GridSource())
    assert again.done == 0 and again.skipped == len(ids)


def test_resume_after_sigkill_computes_only_the_rest(data, tmp_path):
    out = tmp_path / "embed-grid"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(TESTS)!r}, {str(SRC)!r}]
        from pathlib import Path
        from _embed_fixtures import GridSource
        from cxr.pretrained.embed import EmbedConfig, build_embeddings
        cfg = EmbedConfig(model="test:grid", manifest=Path({str(data.manifest)!r}),
                          interim=Path({str(data.root / "interim")!r}), out=Path({str(out)!r}),
                          batch_size=4, device="cpu")
        build_embeddings(cfg, GridSource(kill_after=3))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # killed by SIGKILL inside the fourth batch
    with pytest.raises(InputError, match="incomplete"):
        load_embeddings(out)
    ids, expected, ok = _expected(data)
    source = GridSource()
    result = build_embeddings(_cfg(data, out), source)
    assert result.skipped == 12  # three batches of 4 survived the kill
    assert source.loaded_files == len(ids) - 12
    store = load_embeddings(out)
    np.testing.assert_array_equal(np.asarray(store.vectors), expected)
    assert store.index["ok"].to_list() == ok


def test_changed_image_set_keeps_shared_rows(data, tmp_path):
    out = tmp_path / "embed-grid"
    build_embeddings(_cfg(data, out), GridSource())
    manifest = pl.read_parquet(data.manifest)
    fewer = tmp_path / "processed" / "manifest.parquet"
    fewer.parent.mkdir(parents=True)
    manifest.head(manifest.height - 5).write_parquet(fewer)
    (fewer.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(data.raw)}))
    source = GridSource()
    cfg = EmbedConfig(
        model="test:grid", manifest=fewer, interim=tmp_path, out=out, batch_size=4, device="cpu"
    )
    result = build_embeddings(cfg, source)
    # Every healthy row carried over; only the unreadable one (not recorded as ok) is retried.
    _, expected, ok = _expected(data)
    kept = sum(ok[: manifest.height - 5])
    assert result.carried == kept and source.loaded_files == manifest.height - 5 - kept
    store = load_embeddings(out)
    np.testing.assert_array_equal(np.asarray(store.vectors), expected[: manifest.height - 5])


def test_store_of_another_model_refused_without_force(data, tmp_path):
    out = tmp_path / "embed-grid"
    build_embeddings(_cfg(data, out), GridSource())
    other = GridSource(name="other")
    with pytest.raises(InputError, match="--force"):
        build_embeddings(_cfg(data, out), other)
    result = build_embeddings(_cfg(data, out, force=True), other)
    assert result.skipped == 0 and load_embeddings(out).meta["spec"] == "test:other"


def test_cache_reading_source_takes_squares_from_the_cache(data, tmp_path):
    assert SQUARE == 32  # the fixture's cache size
    out = tmp_path / "embed-grid"
    source = GridSource(reads="cache")
    result = build_embeddings(_cfg(data, out, cache=data.cache), source)
    _, expected, ok = _expected(data)
    # Every readable image came from the cache; the unreadable one was tried as a file.
    assert result.from_cache == sum(ok) and source.loaded_files == 1
    np.testing.assert_array_equal(np.asarray(load_embeddings(out).vectors), expected)


def test_values_float16_cannot_hold_stop_the_run_in_one_line():
    from cxr.core.errors import CxrError
    from cxr.pretrained.embed import to_float16

    ok = to_float16(np.array([[1.5, -65000.0]]), "m")
    assert ok.dtype == np.float16 and np.isfinite(ok).all()
    with pytest.raises(CxrError, match="exceeds float16's range"):
        to_float16(np.array([[1.0, 7e4]]), "m")
    with pytest.raises(CxrError, match="non-finite"):
        to_float16(np.array([[np.nan, 1.0]]), "m")


def test_a_kill_while_the_store_is_relaid_never_leaves_a_store_of_mixed_layouts(
    data, tmp_path, monkeypatch
):
    """The image set changes (the manifest reordered) and the run dies the moment the new array
    has replaced the old one: the rerun must not read the old keys or records against the new
    layout, and the finished store holds each image's own vector."""
    import contextlib

    import cxr.pretrained.embed as embed

    out = tmp_path / "embed-grid"
    build_embeddings(_cfg(data, out), GridSource())
    manifest = pl.read_parquet(data.manifest)
    shuffled = tmp_path / "processed" / "manifest.parquet"
    shuffled.parent.mkdir(parents=True)
    manifest.reverse().write_parquet(shuffled)
    (shuffled.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(data.raw)}))
    cfg = EmbedConfig(
        model="test:grid", manifest=shuffled, interim=tmp_path, out=out, batch_size=4, device="cpu"
    )
    real = embed.atomic_path

    @contextlib.contextmanager
    def dying(target):
        with real(target) as tmp:
            yield tmp
        if Path(target).name == "embeddings.npy":
            raise KeyboardInterrupt  # the new array is in place; nothing after it ran

    monkeypatch.setattr(embed, "atomic_path", dying)
    with pytest.raises(KeyboardInterrupt):
        build_embeddings(cfg, GridSource())
    monkeypatch.setattr(embed, "atomic_path", real)
    with pytest.raises(InputError):
        load_embeddings(out)  # not a store until the rerun finishes it
    build_embeddings(cfg, GridSource())
    _, expected, _ = _expected(data)
    np.testing.assert_array_equal(np.asarray(load_embeddings(out).vectors), expected[::-1])


def test_another_spelling_of_the_same_model_resumes_its_store(data, tmp_path):
    """Stores are keyed on the source's canonical name and weights, not on how the spec was
    typed (xrv:mimic_ch vs xrv:densenet121-res224-mimic_ch, a run directory vs its best.pt)."""
    out = tmp_path / "embed-grid"
    build_embeddings(_cfg(data, out), GridSource())
    alias = GridSource()
    alias.spec = "test:another-spelling"
    result = build_embeddings(_cfg(data, out), alias)
    assert result.done == 0 and result.skipped == load_embeddings(out).index.height


def test_cxr_specs_of_a_run_directory_and_its_checkpoint_share_a_report_name(tmp_path):
    from cxr.evaluation.evaluate import model_slug

    run = tmp_path / "models" / "runA"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"")
    assert model_slug(f"cxr:{run}") == model_slug(f"cxr:{run}/best.pt") == "cxr-runA"
    assert model_slug("xrv:densenet121-res224-all") == "xrv-densenet121-res224-all"
