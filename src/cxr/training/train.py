"""Training, top to bottom: data -> model -> optimizer -> (train epoch, validate, checkpoint)*.

One process or many under torchrun (DDP: each rank trains on its shard of every epoch's
permutation, validation predictions are gathered, rank 0 alone prints and writes). The same code
runs on the CPU (demo, tests) and on CUDA (bf16 autocast, channels_last, pinned memory,
non-blocking copies, optional torch.compile).

Randomness: seeds are set once here. The epoch's batch order and augmentation are drawn from
(seed, epoch, rank) alone, and last.pt holds every other piece of state (model, optimizer,
scheduler, RNG states, early-stopping counters), so `--resume` continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxr.core.atomic import write_text_atomic
from cxr.core.errors import CxrError
from cxr.core.progress import err_console, info, make_progress
from cxr.training.augment import eval_transform, train_transform
from cxr.training.checkpoint import (
    check_compatible,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from cxr.training.config import TrainConfig, config_to_dict, config_to_toml
from cxr.training.data import BatchLoader, CxrDataset, open_cache, read_manifest
from cxr.training.models import MODEL_NAMES, create_model

IN_CHANS = 1


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> tuple[Dist, bool]:
    """Rank, world size and device from torchrun's environment (one process without it)."""
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CxrError("config asks for device=cuda but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, torch.device("cuda" if want_cuda else "cpu")), False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), device), started


def _warn(d: Dist, message: str) -> None:
    if d.main:
        err_console().print(f"cxr train: warning: {message}")


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean binary cross-entropy over the entries the label policy keeps (mask 1)."""
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets, weight=mask, pos_weight=pos_weight, reduction="sum"
    )
    return loss / mask.sum().clamp(min=1.0)


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up to 1, then cosine down to min_ratio, per optimizer step."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def validation_aurocs(study_ids: np.ndarray, probs: np.ndarray, raw: np.ndarray, labels) -> dict:
    """Study-level AUROC per label, scored as `cxr evaluate` scores it by default.

    A study's probability is the mean of its images' (`metrics.aggregate_studies`); its targets are
    `metrics.eval_targets` of its raw labels: blank negative, uncertain (-1) left out, whatever the
    training policy made of either, so runs trained under different policies are validated on the
    same rows. None where a label lacks one of the two classes.
    """
    import polars as pl
    from sklearn.metrics import roc_auc_score

    from cxr.stats.metrics import aggregate_studies, eval_targets

    names = list(labels)
    frame = pl.DataFrame({"study_id": np.asarray(study_ids, dtype=np.int64)}).hstack(
        pl.DataFrame(np.asarray(probs, dtype=np.float64), schema=names, orient="row")
    )
    study_probs = aggregate_studies(frame, names).select(names).to_numpy()
    _, first = np.unique(study_ids, return_index=True)  # sorted study ids, as aggregate_studies
    y = eval_targets(raw[first])  # labels are per study: any image's row will do
    out: dict[str, float | None] = {}
    for j, name in enumerate(names):
        keep = np.isfinite(y[:, j])
        yj = y[keep, j]
        out[name] = (
            None
            if yj.size == 0 or yj.min() == yj.max()
            else float(roc_auc_score(yj, study_probs[keep, j]))
        )
    return out


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _clean(value):
    """NaN -> None so metrics are valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _better(score: float, best: float) -> bool:
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per `cfg`, writing config.toml, metrics.jsonl, tb/, best.pt and last.pt in cfg.out.

    Returns a summary: best epoch and score, epochs run, whether early stopping fired.
    """
    d, started = _setup_distributed(cfg)
    try:
        return _train(cfg, resume, d)
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, d: Dist) -> dict:
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and not last_path.exists():
        raise CxrError(f"{last_path}: nothing to resume (no last.pt in {out})")
    if not resume and (last_path.exists() or best_path.exists()):
        raise CxrError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not cfg.manifest or not cfg.cache:
        raise CxrError("config: manifest and cache paths must be set")
    if cfg.model not in MODEL_NAMES:  # before any data is read
        raise CxrError(f"unknown model {cfg.model!r}; valid: {', '.join(MODEL_NAMES)}")
    cuda = d.device.type == "cuda"

    # -- seeds, once ------------------------------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # -- data -------------------------------------------------------------------------------------
    manifest = read_manifest(cfg.manifest)
    splits = set(manifest["split"].unique().to_list())
    for split in ("train", "validate"):
        if split not in splits:
            raise CxrError(f"{cfg.manifest}: manifest has no {split} split; training needs both")
    cache = open_cache(cfg.cache, cfg.manifest)
    if cfg.cache_size != cache.size:
        # Record the size actually read (an explicit cache path may differ from cache_size, or
        # cache_size may be 0).
        cfg = dataclasses.replace(cfg, cache_size=cache.size)
    train_ds = CxrDataset(manifest, cache, "train", cfg.labels, cfg.policy)
    val_ds = CxrDataset(manifest, cache, "validate", cfg.labels, cfg.policy)
    del manifest  # subject_id goes no further than this point
    for ds in (train_ds, val_ds):
        if ds.n_excluded:
            _warn(d, f"{ds.n_excluded} {ds.split} images left out: their cache row failed")
        if len(ds) == 0:
            raise CxrError(f"no usable {ds.split} images in {cfg.cache}")
    positives = (train_ds.targets * train_ds.mask).sum(0)
    negatives = ((1 - train_ds.targets) * train_ds.mask).sum(0)
    no_pos = [name for name, p in zip(cfg.labels, positives.tolist(), strict=True) if p == 0]
    # e.g. No Finding (only ever 1 or blank) under missing=ignore
    no_neg = [name for name, n in zip(cfg.labels, negatives.tolist(), strict=True) if n == 0]
    if no_pos:
        _warn(d, f"no positive train images for {', '.join(no_pos)}: left out of macro AUROC")
    if no_neg:
        _warn(d, f"no negative train images for {', '.join(no_neg)}: left out of macro AUROC")
    one_class = set(no_pos) | set(no_neg)
    pin = cuda  # page-locked batches copy to the GPU asynchronously
    train_loader = BatchLoader(
        train_ds,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        rank=d.rank,
        world=d.world,
        drop_last=True,  # constant batch shapes (BatchNorm, torch.compile)
        limit=cfg.limit_train_batches,
        prefetch=cfg.prefetch,
        pin_memory=pin,
    )
    val_loader = BatchLoader(
        val_ds, cfg.batch_size * 2, shuffle=False, rank=d.rank, world=d.world, pin_memory=pin
    )

    # -- model, loss, optimizer, schedule --------------------------------------------------------
    # A resumed run takes its weights from last.pt: no pretrained download (it may be offline).
    pretrained = None if resume else (cfg.pretrained or None)
    model = create_model(cfg.model, len(cfg.labels), IN_CHANS, pretrained, labels=cfg.labels)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last_path)
        check_compatible(ckpt, arch=cfg.model, labels=cfg.labels, path=last_path)
        if "optimizer" not in ckpt:
            raise CxrError(f"{last_path}: no resume state in this checkpoint")
        model.load_state_dict(ckpt["model"])
    model = model.to(d.device)
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pos_weight = None
    if cfg.pos_weight == "auto":
        pos_weight = torch.where(positives > 0, negatives / positives.clamp(min=1), 1.0)
        pos_weight = pos_weight.clamp(max=100.0)
        pos_weight = pos_weight.to(d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(total_steps, max(1, round(cfg.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(warmup, total_steps, cfg.min_lr_ratio)
    )
    # `fwd` runs validation (no DDP wrapper: ranks may see unequal numbers of batches there);
    # `net` runs training steps (DDP averages gradients across ranks). Under DDP, compile the
    # DDP module (not DDP around a compiled one), so that its optimizer splits the graph at the
    # gradient buckets and communication overlaps the backward pass.
    fwd = torch.compile(model) if cfg.compile else model
    net = fwd
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if cuda else None
        )
        if cfg.compile:
            net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()

    start_epoch, best_score, best_epoch, bad_epochs = 0, float("nan"), 0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        best_score, best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
        bad_epochs = int(ckpt["bad_epochs"])

    # -- outputs (rank 0 alone) ------------------------------------------------------------------
    writer = None
    metrics_path = out / "metrics.jsonl"
    history: list[str] = []
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.toml", config_to_toml(cfg))
        if resume and metrics_path.exists():
            # Keep the epochs last.pt covers; a crash after writing metrics but before last.pt
            # would otherwise repeat a line.
            lines = metrics_path.read_text(encoding="utf-8").splitlines()
            history = [ln for ln in lines if ln and json.loads(ln)["epoch"] <= start_epoch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tensorboard's own deprecation noise
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch + 1)
        info(
            f"train: {len(train_ds)} images, validate: {len(val_ds)} images, {cfg.model} at "
            f"{cfg.image_size} px on {d.device.type} x{d.world}, {steps_per_epoch} steps/epoch"
        )

    def validate() -> dict:
        """Validate-split logits from every rank -> loss (training masks), study-level AUROC."""
        if d.world > 1:
            # DDP syncs BatchNorm running stats from rank 0 only at the start of each training
            # forward; each rank then updated its own. Score rank 0's model (the one saved).
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        fwd.eval()
        parts_pos, parts_logits = [], []
        with torch.no_grad():
            for batch in val_loader:
                batch = batch.to(d.device)
                x = eval_transform(batch.img, cfg.image_size, cfg.mean, cfg.std)
                if cuda and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    logits = fwd(x)
                parts_pos.append(batch.positions.cpu())
                parts_logits.append(logits.float().cpu())
        pos = torch.cat(parts_pos) if parts_pos else torch.zeros(0, dtype=torch.long)
        logits = torch.cat(parts_logits) if parts_logits else torch.zeros(0, len(cfg.labels))
        if d.world > 1:
            gathered: list = [None] * d.world
            dist.all_gather_object(gathered, (pos, logits))
            pos = torch.cat([p for p, _ in gathered])
            logits = torch.cat([lg for _, lg in gathered])
        order = torch.argsort(pos)
        pos, logits = pos[order], logits[order]
        if not torch.isfinite(logits).all():
            _nan_stop(epoch, "validation", best_path, best_epoch, best_score)
        # The loss under the training policy's masks; the AUROC as evaluation scores it.
        val_loss = float(masked_bce(logits, val_ds.targets[pos], val_ds.mask[pos]))
        aurocs = validation_aurocs(
            val_ds.study_ids[pos.numpy()],
            torch.sigmoid(logits).numpy(),
            val_ds.raw_labels[pos.numpy()],
            cfg.labels,
        )
        counted = [v for k, v in aurocs.items() if v is not None and k not in one_class]
        macro = float(np.mean(counted)) if counted else float("nan")
        return {"val_loss": val_loss, "val_macro_auroc": macro, "val_auroc": aurocs}

    # -- the loop -------------------------------------------------------------------------------
    stopped_early = False
    epoch = start_epoch
    for epochs_now, epoch in enumerate(range(start_epoch + 1, cfg.epochs + 1), 1):
        net.train()
        train_loader.set_epoch(epoch)
        # Augmentation draws from its own generator, seeded per epoch and rank: resumable.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + d.rank)
        loss_sum = torch.zeros((), device=d.device)
        seen = 0
        t0 = time.perf_counter()
        with make_progress(_fields_column()) if d.main else _NoBar() as bar:
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch, stats="")
            for step, batch in enumerate(train_loader, 1):
                batch = batch.to(d.device, non_blocking=True)
                x = train_transform(batch.img, cfg.image_size, cfg.mean, cfg.std, cfg.augment, gen)
                if cuda and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    logits = net(x)
                loss = masked_bce(logits, batch.labels, batch.mask, pos_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * len(batch.img)
                seen += len(batch.img)
                if step % 10 == 0 or step == steps_per_epoch:
                    # One host sync every few steps: the loss for the bar and the NaN check.
                    mean_loss = float(loss_sum) / seen
                    if d.world == 1 and not math.isfinite(mean_loss):
                        _nan_stop(epoch, step, best_path, best_epoch, best_score)
                    rate = seen * d.world / (time.perf_counter() - t0)
                    bar.update(
                        task, completed=step, stats=f"loss {mean_loss:.4f}  {rate:,.0f} img/s"
                    )
        if d.world > 1:
            # On the training device: NCCL reduces CUDA tensors only (gloo takes the CPU's).
            totals = torch.tensor(
                [float(loss_sum), float(seen)], dtype=torch.float64, device=d.device
            )
            dist.all_reduce(totals)
            train_loss, seen_all = float(totals[0] / totals[1]), int(totals[1])
        else:
            train_loss, seen_all = float(loss_sum) / max(seen, 1), seen
        if not math.isfinite(train_loss):
            _nan_stop(epoch, steps_per_epoch, best_path, best_epoch, best_score)
        images_per_s = seen_all / (time.perf_counter() - t0)

        val = validate()
        score = val["val_macro_auroc"]
        improved = best_epoch == 0 or _better(score, best_score)
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
        else:
            bad_epochs += 1
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            **val,
            "images_per_s": images_per_s,
            "lr": optimizer.param_groups[0]["lr"],
            "label_policy": cfg.policy.to_dict(),
        }

        if d.main:
            history.append(json.dumps(_clean(record)))
            write_text_atomic(metrics_path, "\n".join(history) + "\n")
            writer.add_scalar("train/loss", train_loss, epoch)
            writer.add_scalar("train/images_per_s", images_per_s, epoch)
            writer.add_scalar("train/lr", record["lr"], epoch)
            writer.add_scalar("val/loss", val["val_loss"], epoch)
            writer.add_scalar("val/macro_auroc", score, epoch)
            for name, value in val["val_auroc"].items():
                if value is not None:
                    writer.add_scalar(f"val_auroc/{name}", value, epoch)
            writer.flush()
            ckpt = make_checkpoint(
                model,
                arch=cfg.model,
                labels=cfg.labels,
                preprocess={
                    "image_size": cfg.image_size,
                    "source_size": cache.size,
                    "mean": cfg.mean,
                    "std": cfg.std,
                    "in_chans": IN_CHANS,
                    "method": str(cache.meta.get("method", "")),
                },
                label_policy=cfg.policy.to_dict(),
                config=config_to_dict(cfg),
                epoch=epoch,
                val_metrics=_clean(val),
            )
            if improved:
                save_checkpoint(best_path, ckpt)
            ckpt.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=_rng_state(),
                best_score=best_score,
                best_epoch=best_epoch,
                bad_epochs=bad_epochs,
            )
            save_checkpoint(last_path, ckpt)
            info(
                f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val['val_loss']:.4f}, "
                f"val macro AUROC {score:.4f}{' (best)' if improved else ''}, "
                f"{images_per_s:,.0f} img/s"
            )
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped_early = True
            if d.main:
                info(f"early stop: no better validate macro AUROC for {cfg.patience} epochs")
            break
        if cfg.stop_after_epochs and epochs_now >= cfg.stop_after_epochs:
            break
    if writer is not None:
        writer.close()
    if d.world > 1:
        dist.barrier()  # nobody exits before rank 0 has written
    return {
        "best_epoch": best_epoch,
        "best_val_macro_auroc": best_score,
        "last_epoch": epoch,
        "stopped_early": stopped_early,
        "out": str(out),
        "rank": d.rank,
    }


def _nan_stop(epoch: int, step, best_path: Path, best_epoch: int, best: float) -> None:
    kept = f"{best_path} (epoch {best_epoch}) left as it was" if best_epoch else "nothing saved"
    where = step if step == "validation" else f"step {step}"
    what = "predictions are" if step == "validation" else "loss is"
    raise CxrError(
        f"{what} not finite at epoch {epoch}, {where}; stopped, {kept}. "
        "Lower lr, keep grad_clip on, or check the inputs"
    )


def _fields_column():
    from rich.progress import TextColumn

    return TextColumn("{task.fields[stats]}")


class _NoBar:
    """Ranks other than 0 draw nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None
