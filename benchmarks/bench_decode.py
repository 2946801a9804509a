"""Decode-and-cache benchmark: the cache path (JPEG draft + box fit) against full decode + resize.

    PYTHONPATH=src python benchmarks/bench_decode.py [--n 40] [--rows 160] [--repeat 3] [--noise 5]

Writes real-size synthetic CXR-like JPEGs (3056 x 2544, grayscale, quality 95) once into
benchmarks/_work/ (gitignored), then measures in one run, on this machine:
  1. one core: Pillow full decode + box resize to 256, vs `load_xray(max_side=256)` + `fit_square`
  2. fidelity: PSNR of the cached image against the full decode box-resized to the same geometry
  3. `cxr preprocess --size 256` with 1 and 2 workers on a manifest of those images (whole process)
Compare ratios measured in the same run; absolute times on a shared 2-core box are noisy.
`--noise` is the film grain's standard deviation: 5 (the default) gives 2.8 MB files, 2 gives
1.56 MB, MIMIC-CXR-JPG's average size. Entropy decoding, which no reduced-scale decode avoids,
grows with the file size, so the speed-up depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from cxr.imaging.images import fit_geometry, fit_square, load_xray
from cxr.mimic.schema import LABELS

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "decode"
H, W, SIZE = 3056, 2544, 256


def xray_like(seed: int, noise: float = 5.0) -> np.ndarray:
    """A CXR-like 3056 x 2544 picture: body, lungs, ribs, film grain (MIMIC-sized JPEG entropy)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, W, dtype=np.float32)[None, :]
    body = np.exp(-((((x - 0.5) / 0.4) ** 2 + ((y - 0.55) / 0.55) ** 2) ** 2))
    lungs = sum(np.exp(-(((x - c) / 0.14) ** 2 + ((y - 0.45) / 0.27) ** 2)) for c in (0.32, 0.68))
    ribs = 0.5 + 0.5 * np.sin(y * (55 + seed % 7) + 3 * x)
    spine = np.exp(-(((x - 0.5) / 0.04) ** 2))
    img = 25 + 175 * body - 85 * lungs + 25 * ribs * lungs + 40 * spine * body
    img += rng.normal(0, noise, (H, W)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def raw_dir(noise: float) -> Path:
    return WORK / ("raw" if noise == 5.0 else f"raw-noise{noise:g}")


def make_inputs(n: int, noise: float) -> list[Path]:
    raw = raw_dir(noise)
    raw.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = raw / f"img{i:03d}.jpg"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            Image.fromarray(xray_like(i, noise)).save(tmp, format="JPEG", quality=95)
            tmp.rename(p)
        paths.append(p)
    return paths


def full_decode_resize(path: Path) -> np.ndarray:
    """The baseline and the fidelity reference: full decode, box (area) resize, same geometry."""
    with Image.open(path) as im:
        im.load()
        nh, nw = fit_geometry(im.height, im.width, SIZE)
        small = np.asarray(im.resize((nw, nh), Image.Resampling.BOX))  # inputs are L already
    out = np.zeros((SIZE, SIZE), np.uint8)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def full_decode_only(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def draft_decode_only(path: Path) -> tuple[int, int]:
    """The reduced-scale decode alone; returns the decoded size (to show the 1/8 scale is used)."""
    with Image.open(path) as im:
        w, h = im.size
        nh, nw = fit_geometry(h, w, SIZE)
        im.draft("L", (nw, nh))
        im.load()
        return im.size


def cache_path(path: Path) -> np.ndarray:
    return fit_square(load_xray(path, max_side=SIZE), SIZE)


def rates(fn, paths) -> tuple[float, float]:
    """(images per wall second, images per CPU second) for one pass over `paths`."""
    w, c = time.perf_counter(), time.process_time()
    for p in paths:
        fn(p)
    return len(paths) / (time.perf_counter() - w), len(paths) / (time.process_time() - c)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def preprocess_rate(rows: int, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "cxr", "--quiet", "--data-dir", str(WORK / "data")]
    cmd += ["preprocess", "--size", str(SIZE), "--workers", str(workers), "--force"]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return rows / (time.perf_counter() - t)


def write_manifest(paths: list[Path], rows: int) -> None:
    """A manifest of `rows` rows cycling over the files (the OS cache holds them, as in real runs)."""
    processed = WORK / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame(
        {
            "dicom_id": [f"{i:08x}-00000000-00000000-00000000-00000000" for i in range(rows)],
            "study_id": [50000000 + i for i in range(rows)],
            "subject_id": [10000000 + i for i in range(rows)],
            "split": ["train"] * rows,
            "view_position": ["PA"] * rows,
            "image_path": [paths[i % len(paths)].name for i in range(rows)],
            "report_path": pl.Series([None] * rows, dtype=pl.String),
        }
    ).with_columns(pl.lit(None, dtype=pl.Float32).alias(label) for label in LABELS)
    df.write_parquet(processed / "manifest.parquet")
    (processed / "manifest.json").write_text(json.dumps({"raw_dir": str(paths[0].parent)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="distinct JPEGs to write (default 40)")
    ap.add_argument("--rows", type=int, default=160, help="manifest rows for preprocess runs")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument(
        "--noise", type=float, default=5.0, help="film grain std (5: 2.8 MB files, 2: 1.56 MB)"
    )
    args = ap.parse_args()
    load_before = os.getloadavg()[0]

    t = time.perf_counter()
    paths = make_inputs(args.n, args.noise)
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(
        f"inputs: {len(paths)} JPEGs {W}x{H} q95, {mb:.2f} MB average ({time.perf_counter() - t:.0f} s)"
    )

    for p in paths[:3]:  # warm the page cache and the imports
        cache_path(p), full_decode_resize(p)
    # Interleaved passes; CPU-time rates are the per-core figures (robust to other load on the
    # box), wall-time rates show what a user would see now.
    full_w, full_c, fast_w, fast_c, ratios = [], [], [], [], []
    for _ in range(args.repeat):
        fw, fc = rates(full_decode_resize, paths)
        cw, cc = rates(cache_path, paths)
        full_w.append(fw)
        full_c.append(fc)
        fast_w.append(cw)
        fast_c.append(cc)
        ratios.append(cc / fc)
    med = statistics.median
    print(
        f"one core, Pillow full decode + box resize to {SIZE}: "
        f"{med(full_c):.1f} images/CPU-s ({med(full_w):.1f}/s wall)"
    )
    print(
        f"one core, cache path (load_xray max_side + fit_square): "
        f"{med(fast_c):.1f} images/CPU-s ({med(fast_w):.1f}/s wall)"
    )
    print(
        f"  speed-up {med(ratios):.2f}x (goal >= 1.7x), {med(fast_c):.1f}/s per core (goal >= 30)"
    )

    # Where the time goes: the decodes alone (entropy decoding is common to both).
    full_only = med([rates(full_decode_only, paths)[1] for _ in range(args.repeat)])
    draft_only = med([rates(draft_decode_only, paths)[1] for _ in range(args.repeat)])
    print(
        f"  decode alone: full {1000 / full_only:.1f} ms, draft to "
        f"{draft_decode_only(paths[0])} {1000 / draft_only:.1f} ms (CPU per image)"
    )

    scores = [psnr(cache_path(p), full_decode_resize(p)) for p in paths]
    print(
        f"fidelity vs full decode + area resize: PSNR mean {np.mean(scores):.1f} dB, "
        f"min {np.min(scores):.1f} dB (goal >= 35)"
    )

    write_manifest(paths, args.rows)
    one, two = [], []
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        one.append(preprocess_rate(args.rows, 1))
        two.append(preprocess_rate(args.rows, 2))
    r1, r2 = statistics.median(one), statistics.median(two)
    print(
        f"cxr preprocess ({args.rows} rows, whole process): 1 worker {r1:.1f}/s, 2 workers {r2:.1f}/s"
    )
    print(f"  2 workers / 1 worker: {r2 / r1:.2f}x (goal >= 1.8x)")
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}, ", end="")
    print(f"Pillow {Image.__version__}")


if __name__ == "__main__":
    main()
