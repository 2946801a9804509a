"""Training data: manifest rows + cached images -> batches of (uint8 image, targets, mask).

The cache is one uint8 (N, S, S) memory-mapped array, so a batch is a single numpy fancy-index
gather (rows sorted, so reads go forward through the file) instead of B `__getitem__` calls and a
collate. `BatchLoader` does that per batch, shards batches across DDP ranks like DistributedSampler,
and can gather the next batches in a background thread while the GPU works. Augmentation runs
afterwards on whole batches on the device (cxr.training.augment).

Samples carry `dicom_id` and `study_id`, never `subject_id`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from cxr.core.errors import CxrError
from cxr.imaging.cache import holds_manifest, load_cache
from cxr.mimic import schema
from cxr.mimic.manifest import read_manifest
from cxr.mimic.policy import LabelPolicy, apply_policy

__all__ = ["BatchLoader", "CxrDataset", "open_cache", "read_manifest", "shard"]


def open_cache(cache_dir: str | Path, manifest_path: str | Path | None = None):
    """Load the image cache (cxr.imaging.cache.load_cache) and check it holds this manifest's
    images (its (dicom_id, image_path) list: other columns of the manifest may change freely)."""
    cache_dir = Path(cache_dir)
    cache = load_cache(cache_dir)
    if manifest_path is not None and not holds_manifest(cache, Path(manifest_path)):
        raise CxrError(
            f"{cache_dir}: the cache holds another image set than {manifest_path}; "
            f"`cxr preprocess --size {cache.size}` updates it, decoding only the images it lacks"
        )
    return cache


@dataclass(frozen=True)
class Batch:
    """One batch on the host (or device after `.to`). `positions` index the dataset's rows."""

    img: torch.Tensor  # uint8 (B, 1, S, S)
    labels: torch.Tensor  # float32 (B, L) targets after the policy
    mask: torch.Tensor  # float32 (B, L)
    positions: torch.Tensor  # int64 (B,)

    def to(self, device: torch.device, non_blocking: bool = True) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def __iter__(self):
        return iter((self.img, self.labels, self.mask, self.positions))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in self))


class CxrDataset(torch.utils.data.Dataset):
    """The images of one split whose cache row is usable, with policy-applied targets.

    `n_excluded` counts images whose cache row failed (`ok` false); they are left out. An image the
    cache does not know at all means the cache does not match the manifest: an error.

    `label_source` "negbio" reads the targets from the manifest's NegBio columns (`negbio_<Label>`)
    instead of the CheXpert ones; images of studies without a NegBio row are left out and counted
    in `n_unlabelled`.
    """

    def __init__(
        self,
        manifest: pl.DataFrame,
        cache,
        split: str,
        label_names: Sequence[str],
        policy: LabelPolicy,
        label_source: str = "chexpert",
    ) -> None:
        columns = [schema.label_column(name, label_source) for name in label_names]
        needed = [schema.NEGBIO_LABELLED, *columns] if label_source == "negbio" else columns
        missing_labels = [name for name in needed if name not in manifest.columns]
        if missing_labels:
            hint = (
                f" (no NegBio labels: put {schema.NEGBIO_CSV}.gz at the raw root and rebuild "
                "the manifest)"
                if label_source == "negbio"
                else ""
            )
            raise CxrError(f"manifest lacks label columns {missing_labels}{hint}")
        df = manifest.filter(pl.col("split") == split).sort(["study_id", "dicom_id"])
        self.n_unlabelled = 0
        if label_source == "negbio":
            labelled = df[schema.NEGBIO_LABELLED].fill_null(False)
            self.n_unlabelled = int((~labelled).sum())
            df = df.filter(labelled)
        index = cache.index.select("dicom_id", "row", "ok")
        joined = df.select("dicom_id").join(index, on="dicom_id", how="left", maintain_order="left")
        unknown = joined.filter(pl.col("row").is_null()).height
        if unknown:
            raise CxrError(
                f"{unknown} {split} images of the manifest are not in the cache; "
                f"`cxr preprocess --size {cache.size}` adds them"
            )
        ok = joined["ok"].to_numpy().astype(bool)
        self.n_excluded = int((~ok).sum())
        df = df.filter(pl.Series(ok))
        self.split = split
        self.label_names = tuple(label_names)
        self.images = cache.images
        self.rows = joined["row"].to_numpy()[ok].astype(np.int64)
        self.dicom_ids: list[str] = df["dicom_id"].to_list()
        self.study_ids = df["study_id"].to_numpy().astype(np.int64)
        raw = df.select(columns).to_numpy().astype(np.float32)
        self.raw_labels = raw
        targets, mask = apply_policy(raw, self.label_names, policy)
        self.targets = torch.from_numpy(targets)
        self.mask = torch.from_numpy(mask)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        img = torch.from_numpy(np.array(self.images[self.rows[i]], copy=True))[None]
        return {
            "img": img,
            "labels": self.targets[i],
            "mask": self.mask[i],
            "dicom_id": self.dicom_ids[i],
            "study_id": int(self.study_ids[i]),
        }

    def batch(self, positions: np.ndarray) -> Batch:
        """Gather many samples at once: one sorted fancy-index read of the memmap."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        positions, rows = positions[order], rows[order]
        img = torch.from_numpy(np.ascontiguousarray(self.images[rows]))[:, None]
        pos = torch.from_numpy(positions)
        return Batch(img, self.targets[pos], self.mask[pos], pos)


def shard(n: int, rank: int, world: int, pad: bool) -> np.ndarray:
    """Positions 0..n-1 split over ranks like DistributedSampler: rank::world, padded to equal size
    (training, so every rank takes the same number of steps) or not (evaluation, exact)."""
    idx = np.arange(n)
    if pad and world > 1:
        total = -(-n // world) * world
        idx = np.concatenate([idx, idx[: total - n]])
    return idx[rank::world]


class BatchLoader:
    """Batches of a dataset: shuffled per epoch from (seed, epoch) alone, so a resumed run reads
    exactly the batches an uninterrupted one would, and sharded across ranks."""

    def __init__(
        self,
        dataset: CxrDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        limit: int = 0,
        prefetch: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.limit = limit
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        n = len(self.dataset)
        if self.shuffle:
            # Permute first, then shard: every rank sees a different part of the same permutation.
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            mine = perm[shard(n, self.rank, self.world, pad=True)]
        else:
            mine = shard(n, self.rank, self.world, pad=False)
        stop = len(mine) - len(mine) % self.batch_size if self.drop_last else len(mine)
        out = [mine[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]
        if self.drop_last and not out and len(mine):
            out = [mine]  # fewer images than one batch: still train on them
        return out[: self.limit] if self.limit else out

    def __len__(self) -> int:
        return len(self._batches())

    def _make(self, positions: np.ndarray) -> Batch:
        batch = self.dataset.batch(positions)
        return batch.pin_memory() if self.pin_memory else batch

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        if self.prefetch <= 0:
            for positions in batches:
                yield self._make(positions)
            return
        # A background thread gathers ahead (numpy copies and pinning release the GIL).
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            try:
                for positions in batches:
                    if stop.is_set():
                        return
                    q.put(self._make(positions))
                q.put(None)
            except BaseException as exc:  # surfaced in the consumer
                q.put(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.01)
