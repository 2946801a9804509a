"""Benchmark `cxr predict` latency (evaluation's scoring: benchmarks/bench_evaluate.py).

Per-image latency of prediction for DenseNet-121 at 224 on the CPU, reading a 3056 x 2544 JPEG
   (quality 95, CXR-like) each time: warm process, `cxr.inference.predict.predict_files` called in-process
   repeatedly with one image, median (goal <= 150 ms/image), with the reference recipe's
preprocessing (a 256 square, resized to 224 by eval_transform). Also the read+fit part alone.

    PYTHONPATH=src python benchmarks/bench_predict.py [--repeats 15]

Inputs are generated under benchmarks/_work (gitignored) and never committed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).parent / "_work" / "predict"


def _make_jpeg(path: Path, h: int = 3056, w: int = 2544) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    body = 90 + 70 * np.exp(-(((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2))
    img = body + 25 * np.sin(yy / 40.0) * np.cos(xx / 55.0) + rng.normal(0, 12, (h, w))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)


def bench_predict(repeats: int) -> None:
    import torch

    from cxr.inference.predict import _read, predict_files
    from cxr.inference.runtime import Preprocess
    from cxr.mimic.schema import LABELS
    from cxr.training.models import create_model

    WORK.mkdir(parents=True, exist_ok=True)
    jpeg = WORK / "pa_3056x2544.jpg"
    if not jpeg.exists():
        _make_jpeg(jpeg)
    model = create_model("densenet121", num_labels=len(LABELS), in_chans=1).eval()
    model = model.to(memory_format=torch.channels_last)  # as cxr.inference.runtime.load_model does
    # configs/densenet121-224.toml trains at 224 from the 256 cache: predict reads the file as a
    # 256 square (as the cache does) and eval_transform resizes it to 224, as validation did.
    pre = Preprocess(image_size=224, mean=0.5, std=0.25, source_size=256)
    print(f"torch threads: {torch.get_num_threads()}, JPEG {jpeg.stat().st_size / 1e6:.2f} MB")

    def once() -> float:
        t = time.perf_counter()
        result, _ = predict_files(model, pre, LABELS, [jpeg], batch_size=1)
        assert len(result.rows) == 1
        return time.perf_counter() - t

    def read_once() -> float:
        t = time.perf_counter()
        list(_read([jpeg], pre))
        return time.perf_counter() - t

    for _ in range(3):  # warm-up: allocator, oneDNN kernels, page cache
        once()
    total = [once() for _ in range(repeats)]
    read = [read_once() for _ in range(repeats)]
    print(
        f"predict one image (read + fit 256 + resize 224 + DenseNet-121): median {1e3 * statistics.median(total):.0f} ms "
        f"(min {1e3 * min(total):.0f}, max {1e3 * max(total):.0f}) over {repeats} runs; goal <= 150 ms"
    )
    print(f"  of which read + fit_square: median {1e3 * statistics.median(read):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bench_predict(args.repeats)


if __name__ == "__main__":
    main()
