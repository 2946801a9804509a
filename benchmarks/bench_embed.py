"""`cxr embed` throughput per model source on this machine, with full-size stand-ins.

No published weights are needed (nor downloaded): each source is built at its real size with
random weights and loaded through cxr's own code path (`--weights`):

- xrv: a torchxrayvision DenseNet-121 (18 outputs), saved whole as the published files are;
- rad-dino: a DINOv2 ViT-B/14 with RAD-DINO's configuration and image processor (518 px);
- cxr: a cxr checkpoint, DenseNet-121 at 224 px (from a 256 px image cache and from the files).

Images are synthetic JPEGs at MIMIC-CXR-JPG's typical size (about 2,500 x 3,000 px, 8-bit), so
decoding and each library's resize cost what they cost on the real files.

    python benchmarks/bench_embed.py [--images 48] [--batch-size 16] [--device cpu]

Prints images/s for each source (decode + preprocessing + forward + store), and where the time
goes for the file-reading sources (decode + preprocess alone, on the decoding threads).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from cxr.mimic.schema import LABELS

RAD_DINO_PROCESSOR = {
    # microsoft/rad-dino's preprocessor_config.json
    "do_resize": True,
    "size": {"shortest_edge": 518},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 518, "width": 518},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_std": [0.2583, 0.2583, 0.2583],
    "do_convert_rgb": True,
}


def write_images(root: Path, n: int, seed: int = 0) -> Path:
    """n chest-film-sized JPEGs and a manifest over them (all in train)."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    rows = []
    base = rng.normal(0, 1, (64, 48))
    for i in range(n):
        h, w = (3056, 2544) if i % 4 else (2544, 3056)
        coarse = base + rng.normal(0, 0.3, base.shape)
        small = Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8))
        img = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        subject, study, dicom = 10000000 + i, 50000000 + i, f"{i:08x}-bench"
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(raw / rel, quality=95)
        rows.append(
            {
                "dicom_id": dicom,
                "study_id": study,
                "subject_id": subject,
                "split": "train",
                "view_position": "PA",
                "image_path": rel,
                "report_path": None,
                **{label: 1.0 for label in LABELS},
                "rows": h,
                "columns": w,
            }
        )
    manifest = root / "processed" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pl.DataFrame(rows, schema_overrides={"report_path": pl.String}).write_parquet(manifest)
    (manifest.parent / "manifest.json").write_text(json.dumps({"raw_dir": str(raw)}))
    return manifest


def xrv_weights(root: Path) -> Path:
    import torch
    import torchxrayvision as xrv

    path = root / "xrv-densenet121.pt"
    torch.save(xrv.models.DenseNet(num_classes=18, in_channels=1), path)
    return path


def rad_dino_weights(root: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    from transformers.utils import logging

    logging.disable_progress_bar()  # save_pretrained's bar would interleave with the figures

    d = root / "rad-dino"
    config = Dinov2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=518,
        patch_size=14,
    )
    Dinov2Model(config).save_pretrained(d)
    BitImageProcessor(**RAD_DINO_PROCESSOR).save_pretrained(d)
    return d


def cxr_checkpoint(root: Path) -> Path:
    from cxr.imaging.images import METHOD
    from cxr.training.checkpoint import make_checkpoint, save_checkpoint
    from cxr.training.models import create_model

    model = create_model("densenet121", num_labels=len(LABELS), in_chans=1)
    ckpt = make_checkpoint(
        model,
        arch="densenet121",
        labels=LABELS,
        preprocess={
            "image_size": 224,
            "source_size": 256,
            "mean": 0.5,
            "std": 0.25,
            "in_chans": 1,
            "method": METHOD,
        },
        label_policy={"uncertain": "ignore", "missing": "zeros", "overrides": {}},
        config={"arch": "densenet121", "cache_size": 256},
        epoch=1,
        val_metrics={},
    )
    path = root / "models" / "bench" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, ckpt)
    return path


def time_embed(spec, weights, manifest, interim, out, args, cache=None) -> tuple[float, int]:
    from cxr.pretrained.embed import EmbedConfig, build_embeddings

    cfg = EmbedConfig(
        model=spec,
        manifest=manifest,
        interim=interim,
        weights=weights,
        out=out,
        cache=cache,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        force=True,
    )
    t0 = time.perf_counter()
    result = build_embeddings(cfg)
    return time.perf_counter() - t0, result.done


def time_preprocess(spec, weights, manifest, n: int) -> float:
    """Seconds per image of the source's decode + preprocessing alone (one thread)."""
    from cxr.pretrained.registry import open_source

    source = open_source(spec, weights)
    raw = Path(json.loads((manifest.parent / "manifest.json").read_text())["raw_dir"])
    paths = [raw / p for p in pl.read_parquet(manifest)["image_path"].head(n)]
    t0 = time.perf_counter()
    for p in paths:
        source.load(p)
    return (time.perf_counter() - t0) / len(paths)


def main() -> None:
    import torch

    from cxr.core.progress import set_quiet
    from cxr.imaging.cache import PreprocessConfig, build_cache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sources", default="xrv,rad-dino,cxr")
    args = parser.parse_args()
    set_quiet(True)
    wanted = args.sources.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        manifest = write_images(root, args.images)
        print(
            f"{args.images} synthetic JPEGs of 2544 x 3056 written in {time.perf_counter() - t0:.0f} s"
        )
        interim = root / "interim"
        runs = []
        if "xrv" in wanted:
            runs.append(("xrv:densenet121-res224-all", xrv_weights(root), None))
        if "rad-dino" in wanted:
            runs.append(("rad-dino", rad_dino_weights(root), None))
        if "cxr" in wanted:
            ckpt = cxr_checkpoint(root)
            runs.append((f"cxr:{ckpt}", None, "files"))
            t0 = time.perf_counter()
            cache = interim / "cache-256"
            build_cache(PreprocessConfig(manifest=manifest, cache_dir=cache, size=256, workers=2))
            cache_s = time.perf_counter() - t0
            runs.append((f"cxr:{ckpt}", None, cache))
        for spec, weights, cache in runs:
            label = spec.split(":")[0] + (" (image cache)" if isinstance(cache, Path) else "")
            out = root / f"embed-{len(label)}-{label[:3]}"
            seconds, done = time_embed(
                spec,
                weights,
                manifest,
                interim if isinstance(cache, Path) else root / "none",
                out,
                args,
                cache if isinstance(cache, Path) else None,
            )
            line = f"{label:<20} {done / seconds:7.2f} images/s  ({done} images, {seconds:.1f} s)"
            if not isinstance(cache, Path):
                per = time_preprocess(spec, weights, manifest, min(8, args.images))
                line += f"; decode + preprocess alone {per * 1000:.0f} ms/image on one thread"
            else:
                line += f"; building the 256 px cache took {cache_s:.1f} s ({args.images / cache_s:.1f} images/s)"
            print(line)


if __name__ == "__main__":
    main()
