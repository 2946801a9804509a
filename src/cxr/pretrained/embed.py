"""`cxr embed`: one embedding per manifest image, computed once, resumable after a kill.

The store's layout is `cxr.pretrained.embeddings`. Kill safety follows the image cache: a batch's
rows are written into the memory-mapped array and flushed before a journal record says they are
done, so a SIGKILL loses at most the batch in flight, which the next run redoes (inference is
deterministic on one device, so redone rows are the same). `index.parquet` and `"complete": true`
are written once every row has been attempted.

What a store is keyed on: the model (spec and the SHA-256 of its weights) and the ordered image
set (`images_sha256`, as the cache). Embeddings of other weights are refused without --force; a
changed image set keeps the rows of the images both sets share and computes only the others.

Where inputs come from: sources that read cxr cache squares (`cxr:` checkpoints) take them from a
complete cache of their square size when one holds the image (a cache row and a decoded file are
byte-identical by construction), the others decode the image files with their authors'
preprocessing.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cxr import __version__
from cxr.core.atomic import atomic_path, write_text_atomic
from cxr.core.errors import CxrError, InputError
from cxr.pretrained.embeddings import INDEX, JOURNAL, KEYS, META, VECTORS, write_index


@dataclass(frozen=True)
class EmbedConfig:
    model: str  # a source spec (cxr.pretrained.registry)
    manifest: Path
    interim: Path  # <data root>/interim: the default store and cache location
    weights: Path | None = None
    raw: Path | None = None  # default: manifest.json's raw_dir
    out: Path | None = None  # default: <interim>/embed-<source name>
    cache: Path | None = None  # default: <interim>/cache-<square size> for cache sources
    batch_size: int = 32
    workers: int = 2  # image decoding threads
    device: str = "auto"
    force: bool = False


@dataclass
class EmbedResult:
    dir: Path
    n: int
    dim: int
    done: int  # rows computed in this run (failures not included)
    skipped: int  # already in the store before this run
    carried: int  # kept from the store's previous image set
    failed: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, reason), this run
    from_cache: int = 0  # rows of this run read from the image cache
    seconds: float = 0.0


def to_float16(emb: np.ndarray, spec: str) -> np.ndarray:
    """Embeddings as stored. float16 keeps about 3 significant digits up to 65504: a value
    beyond that (or a NaN from the model) would be stored as inf or NaN and poison every probe
    fitted on it, so it stops the run in one line instead (before the batch is journaled)."""
    emb = np.asarray(emb, dtype=np.float32)
    finite = np.isfinite(emb)
    if not finite.all():
        raise CxrError(f"{spec}: the model returned non-finite embeddings (NaN or inf)")
    largest = float(np.abs(emb).max()) if emb.size else 0.0
    if largest > float(np.finfo(np.float16).max):
        raise CxrError(
            f"{spec}: an embedding value of {largest:.4g} exceeds float16's range (65504); "
            "these features cannot be stored as float16"
        )
    return emb.astype(np.float16)


def _source_key(source) -> dict:
    """What makes two stores the same model's: its canonical name (aliases of one weights name,
    a run directory and its best.pt, give one name) and the SHA-256 of its weights."""
    prov = source.provenance or {}
    return {"name": source.name, "weights_sha256": prov.get("weights_sha256")}


def _open_cache(cfg: EmbedConfig, source):
    """The complete image cache a cache-reading source takes its squares from, or None."""
    from cxr.imaging.cache import load_cache

    if source.reads != "cache":
        return None
    if cfg.cache is not None:
        cache = load_cache(cfg.cache)  # asked for: a missing or incomplete one is an error
    else:
        default = cfg.interim / f"cache-{source.square_size}"
        try:
            cache = load_cache(default)
        except CxrError:
            return None
    if cache.size != source.square_size:
        raise InputError(
            f"{cache.dir}: a {cache.size} px cache; {source.spec} reads {source.square_size} px squares"
        )
    return cache


def _prepare(d: Path, meta: dict, keys: pl.DataFrame, force: bool) -> tuple[int, int]:
    """Create or reuse the store in `d` for `meta`; returns (rows kept from an older image set,
    rows already done). Raises when `d` holds another model's embeddings and not `force`."""
    from cxr.imaging.cache import Journal, read_journal

    old_meta = None
    if (d / META).is_file():
        try:
            old_meta = json.loads((d / META).read_text())
        except (OSError, json.JSONDecodeError):
            old_meta = None
    same_model = old_meta is not None and old_meta.get("model") == meta["model"]
    if old_meta is not None and not same_model and not force:
        raise InputError(
            f"{d}: holds embeddings of {old_meta.get('spec')} (weights "
            f"{str((old_meta.get('model') or {}).get('weights_sha256'))[:12]}); pass --force to "
            "replace them, or --out for another directory"
        )
    if same_model and not force and old_meta.get("images_sha256") == meta["images_sha256"]:
        if old_meta.get("dim") != meta["dim"] or not (d / VECTORS).is_file():
            raise InputError(f"{d}: damaged store (dimension or array missing); pass --force")
        try:
            held = np.load(d / VECTORS, mmap_mode="r").shape
        except (OSError, ValueError):
            held = None
        if held != (meta["n"], meta["dim"]):
            raise InputError(
                f"{d / VECTORS}: shape {held}, expected {(meta['n'], meta['dim'])}; pass --force"
            )
        done, _ = read_journal(d, meta["n"])
        return 0, int(done.sum())

    # A new store, or the same model over another image set: carry over the shared rows.
    carried = np.zeros(0, dtype=np.int64)
    old_vectors = None
    if same_model and not force and (d / VECTORS).is_file() and (d / KEYS).is_file():
        try:
            old_keys = pl.read_parquet(d / KEYS).with_row_index("old_row")
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(
                f"{d / KEYS}: unreadable ({type(exc).__name__}); pass --force to start afresh"
            ) from None
        done, errors = read_journal(d, old_keys.height)
        ok_rows = [i for i in range(old_keys.height) if done[i] and errors[i] is None]
        joined = keys.with_row_index("new_row").join(
            old_keys.filter(pl.col("old_row").is_in(ok_rows)),
            on=["dicom_id", "image_path"],
            how="inner",
        )
        if joined.height:
            old_vectors = np.load(d / VECTORS, mmap_mode="r")
            carried = joined.select("new_row", "old_row").to_numpy().astype(np.int64)

    # The order makes a kill at any point safe: first the old store stops being one (embed.json,
    # which names it, and the index and journal that vouch for its rows go), then the new array,
    # keys and journal are written, and embed.json comes last. A store without embed.json is
    # started afresh, never resumed against keys or records of another layout. (`old_vectors`
    # is a memory map: it keeps reading the old array after the new one replaces it.)
    d.mkdir(parents=True, exist_ok=True)
    for stale in (d / META, d / INDEX):
        stale.unlink(missing_ok=True)
    journal_dir = d / JOURNAL
    if journal_dir.is_dir():
        for p in journal_dir.glob("*.jsonl"):
            p.unlink()
    journal_dir.mkdir(exist_ok=True)
    with atomic_path(d / VECTORS) as tmp:
        arr = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float16, shape=(meta["n"], meta["dim"])
        )
        if len(carried):
            arr[carried[:, 0]] = old_vectors[carried[:, 1]]
        arr.flush()
        del arr
    with atomic_path(d / KEYS) as tmp:
        keys.write_parquet(tmp)
    if len(carried):
        journal = Journal(d, None)
        rows = carried[:, 0].tolist()
        journal.append(rows, [None] * len(rows))
        journal.close()
    write_text_atomic(d / META, json.dumps(meta, indent=2) + "\n")
    return len(carried), len(carried)


def build_embeddings(cfg: EmbedConfig, source=None) -> EmbedResult:
    """Fill (or finish) the store of `cfg.model` for the manifest's images (`source`: an opened
    ModelSource to use instead of opening `cfg.model`)."""
    from cxr.core.progress import phase
    from cxr.imaging.cache import (
        hold_cache,
        images_key,
        read_journal,
        read_manifest_images,
        stored_keys,
    )
    from cxr.inference.runtime import resolve_device

    t0 = time.perf_counter()
    if cfg.batch_size < 1 or cfg.workers < 1:
        raise CxrError("--batch-size and --workers must be at least 1")
    keys_full, raw, _ = read_manifest_images(Path(cfg.manifest), cfg.raw)
    device = resolve_device(cfg.device)
    if source is None:
        from cxr.pretrained.registry import open_source

        with phase(f"loading {cfg.model}"):
            source = open_source(cfg.model, cfg.weights, device=str(device))
    source.to(device)
    d = Path(cfg.out) if cfg.out is not None else cfg.interim / f"embed-{source.name}"
    keys = stored_keys(keys_full)
    meta = {
        "name": source.name,
        "spec": source.spec,
        "model": _source_key(source),
        "dim": int(source.dim),
        "n": keys.height,
        "images_sha256": images_key(keys_full),
        "labels": list(source.labels),
        "provenance": source.provenance,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "complete": False,
    }
    with hold_cache(d, f"cxr embed --model {cfg.model}", shared=False):
        carried, already = _prepare(d, meta, keys, cfg.force)
        meta = json.loads((d / META).read_text())
        done_mask, errors = read_journal(d, meta["n"])
        pending = np.flatnonzero(~done_mask)
        result = EmbedResult(d, meta["n"], meta["dim"], 0, already - carried, carried)
        if len(pending):
            _fill(cfg, source, d, keys_full, raw, pending, result)
            done_mask, errors = read_journal(d, meta["n"])
        if done_mask.all():
            write_index(d, keys["dicom_id"], errors)
            meta["complete"] = True
            write_text_atomic(d / META, json.dumps(meta, indent=2) + "\n")
    result.seconds = time.perf_counter() - t0
    return result


def _fill(cfg, source, d, keys_full, raw, pending, result) -> None:
    """Compute the pending rows: cache squares where the cache holds them, else image files."""
    from cxr.core.progress import make_progress
    from cxr.imaging.cache import Journal
    from cxr.pretrained.batches import file_batches, square_batches

    cache = _open_cache(cfg, source)
    from_cache = np.zeros(len(pending), dtype=bool)
    cache_rows = np.full(len(pending), -1, dtype=np.int64)
    if cache is not None:
        ok = cache.index.filter(pl.col("ok")).select("dicom_id", "row")
        wanted = pl.DataFrame({"dicom_id": keys_full["dicom_id"][pending]}).with_row_index("pos")
        hit = wanted.join(ok, on="dicom_id", how="inner")
        cache_rows[hit["pos"].to_numpy()] = hit["row"].to_numpy()
        from_cache = cache_rows >= 0
    result.from_cache = int(from_cache.sum())

    vectors = np.load(d / VECTORS, mmap_mode="r+")
    dicom_ids = keys_full["dicom_id"].to_list()
    journal = Journal(d, None)
    try:
        with make_progress() as progress:
            task = progress.add_task(f"embed {source.name}", total=len(pending))
            cached = pending[from_cache]
            files = pending[~from_cache]
            streams = []
            if len(cached):
                streams.append(
                    (
                        cached,
                        square_batches(
                            source, cache.images, cache_rows[from_cache], cfg.batch_size
                        ),
                    )
                )
            if len(files):
                paths = [raw / keys_full["image_path"][int(r)] for r in files]
                streams.append((files, file_batches(source, paths, cfg.batch_size, cfg.workers)))
            for rows, batches in streams:
                for batch in batches:
                    block = rows[batch.positions]
                    good = block[np.asarray(batch.ok, dtype=bool)]
                    if batch.inputs is not None:
                        vectors[good] = to_float16(source.embed(batch.inputs), source.spec)
                    bad = block[~np.asarray(batch.ok, dtype=bool)]
                    if len(bad):
                        vectors[bad] = 0
                    vectors.flush()  # on disk before the journal says so
                    journal.append(block.tolist(), batch.errors)
                    result.done += len(good)
                    result.failed += [
                        (dicom_ids[int(r)], e)
                        for r, e in zip(block, batch.errors, strict=True)
                        if e
                    ]
                    progress.advance(task, len(block))
    finally:
        journal.close()
        del vectors
