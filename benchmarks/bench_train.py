"""Training throughput: end to end (cache -> loader -> augmentation -> model step) vs the model alone.

In one run, same model and batch:
1. loader alone: batches gathered from a memory-mapped uint8 cache, images/s for one worker
   (goal on the project's CPU: >= 5,000);
2. model alone: forward + backward + AdamW step on a synthetic batch already on the device;
3. end to end: the real BatchLoader (prefetch thread, pinned memory on CUDA), copy to the device,
   batch augmentation, the same step. Prints end-to-end / model-alone (goal on a GPU: >= 0.9).

    PYTHONPATH=src python benchmarks/bench_train.py                    # CPU defaults: cxr_small, 128 px
    PYTHONPATH=src python benchmarks/bench_train.py --model densenet121 --cache-size 256 --size 224 --batch 256

The synthetic cache is written to a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import torch

from cxr.mimic.policy import LabelPolicy
from cxr.mimic.schema import LABELS
from cxr.training.augment import train_transform
from cxr.training.config import AugmentConfig
from cxr.training.data import BatchLoader, CxrDataset
from cxr.training.models import create_model
from cxr.training.train import masked_bce


def synthetic_dataset(tmp: Path, n: int, size: int) -> CxrDataset:
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, size, size))
    for i in range(0, n, 1024):  # smooth-ish noise, in chunks to bound memory
        images[i : i + 1024] = rng.integers(0, 256, (min(1024, n - i), size, size), np.uint8)
    images.flush()
    del images
    ids = [f"{i:08x}-0000-0000-0000-000000000000" for i in range(n)]
    labels = rng.choice(np.array([1, 0, -1, np.nan], np.float32), (n, len(LABELS)))
    manifest = pl.DataFrame(
        {"dicom_id": ids, "study_id": np.arange(n) // 2 + 50_000_000, "split": ["train"] * n}
        | {name: labels[:, j] for j, name in enumerate(LABELS)}
    )
    cache = SimpleNamespace(
        images=np.load(tmp / "images.npy", mmap_mode="r"),
        index=pl.DataFrame({"dicom_id": ids, "row": np.arange(n), "ok": [True] * n}),
        meta={"size": size},
        size=size,
    )
    return CxrDataset(manifest, cache, "train", LABELS, LabelPolicy())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="default: cxr_small on CPU, densenet121 on CUDA"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="model input (default 128 CPU, 224 CUDA)"
    )
    parser.add_argument("--cache-size", type=int, default=None, help="default 128 CPU, 256 CUDA")
    parser.add_argument("--batch", type=int, default=None, help="default 64 CPU, 256 CUDA")
    parser.add_argument("--images", type=int, default=8192, help="images in the synthetic cache")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 20 CPU, 50 CUDA)"
    )
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = args.model or ("densenet121" if cuda else "cxr_small")
    size = args.size or (224 if cuda else 128)
    cache_size = args.cache_size or (256 if cuda else 128)
    batch = args.batch or (256 if cuda else 64)
    steps = args.steps or (50 if cuda else 20)
    warmup = 5
    aug = AugmentConfig()
    print(f"device {device}, model {name}, batch {batch}, cache {cache_size} -> {size} px")

    with tempfile.TemporaryDirectory() as tmp:
        ds = synthetic_dataset(Path(tmp), args.images, cache_size)

        # 1. the loader alone, one worker (this thread), no prefetch
        loader = BatchLoader(ds, batch, shuffle=True, seed=0)
        n, t0 = 0, time.perf_counter()
        for epoch in range(3):
            loader.set_epoch(epoch)
            for b in loader:
                n += len(b.img)
        loader_rate = n / (time.perf_counter() - t0)
        print(f"loader alone (1 worker, uint8 {cache_size} px): {loader_rate:,.0f} images/s")
        loader.set_epoch(0)
        n, t0 = 0, time.perf_counter()
        for b in loader:
            x = train_transform(b.img, size, 0.5, 0.29, aug)
            n += len(x)
        print(
            f"loader + CPU augmentation to {size} px: {n / (time.perf_counter() - t0):,.0f} images/s"
        )

        # 2. and 3. the same model and step
        model = create_model(name, len(LABELS)).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if cuda
            else torch.autocast("cpu", enabled=False)
        )

        def step(x, y, m):
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = net(x)
            loss = masked_bce(logits, y, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        x = torch.randn(batch, 1, size, size, device=device)
        y = torch.randint(0, 2, (batch, len(LABELS)), device=device).float()
        m = torch.ones_like(y)

        def model_alone() -> float:
            for _ in range(warmup):
                step(x, y, m)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(x, y, m)
            sync(device)
            return steps * batch / (time.perf_counter() - t0)

        # Measured before and after the end-to-end run (CPU clocks and allocator caches drift);
        # the better of the two is the reference.
        model_rates = [model_alone()]
        loader = BatchLoader(
            ds, batch, shuffle=True, seed=1, drop_last=True, prefetch=2, pin_memory=cuda
        )
        gen = torch.Generator().manual_seed(0)
        done, t0 = 0, None
        epoch = 0
        while done < warmup + steps:
            loader.set_epoch(epoch)
            epoch += 1
            for b in loader:
                b = b.to(device, non_blocking=True)
                xb = train_transform(b.img, size, 0.5, 0.29, aug, gen)
                step(xb, b.labels, b.mask)
                done += 1
                if done == warmup:
                    sync(device)
                    t0 = time.perf_counter()
                if done == warmup + steps:
                    break
        sync(device)
        e2e_rate = steps * batch / (time.perf_counter() - t0)
        model_rates.append(model_alone())
        model_rate = max(model_rates)
        print(
            f"model alone (synthetic batch on {device.type}): {model_rate:,.0f} images/s "
            f"(before/after: {model_rates[0]:,.0f}/{model_rates[1]:,.0f})"
        )
        print(f"end to end (cache, loader, augmentation, step): {e2e_rate:,.0f} images/s")
        print(f"ratio end to end / model alone: {e2e_rate / model_rate:.2f}")


if __name__ == "__main__":
    main()
