"""Training, top to bottom: data -> model -> optimizer -> (train epoch, validate, checkpoint)*.

One process or many under torchrun (DDP: each rank trains on its shard of every epoch's
permutation, validation predictions are gathered, rank 0 alone prints and writes). The same code
runs on the CPU (demo, tests) and on CUDA (bf16 autocast, channels_last, pinned memory,
non-blocking copies, optional torch.compile).

Randomness: seeds are set once here. The epoch's batch order and augmentation are drawn from
(seed, epoch, rank) alone, and last.pt holds every other piece of state (model, optimizer,
scheduler, RNG states, early-stopping counters, the metrics so far), so `--resume` continues
exactly.

Structure: `setup` (checks, data, model, optimizer; restores last.pt), then per epoch
`train_one_epoch`, `validate` and `save_epoch` (last.pt, best.pt, metrics.jsonl, in that order,
so a kill anywhere leaves a run `--resume` completes; `open_outputs` repairs what a kill left).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxr.core.atomic import write_text_atomic
from cxr.core.errors import CxrError
from cxr.core.jsonsafe import json_safe
from cxr.core.progress import err_console, info, log_stamp, make_progress
from cxr.training.augment import eval_transform, train_transform
from cxr.training.checkpoint import (
    check_compatible,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    without_resume_state,
)
from cxr.training.config import TrainConfig, config_to_dict, config_to_toml
from cxr.training.data import BatchLoader, CxrDataset, open_cache, read_manifest
from cxr.training.device import resolve_device
from cxr.training.models import create_model

IN_CHANS = 1


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device
    ddp: bool = False  # a process group runs: DDP wrapper and collectives, even for one process

    @property
    def main(self) -> bool:
        return self.rank == 0


# What torchrun sets for every process it starts (env:// rendezvous).
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _setup_distributed(cfg: TrainConfig) -> tuple[Dist, bool]:
    """Rank, world size and device from torchrun's environment (one process without it).

    Under torchrun the process group is started even for one process, so that
    `torchrun --nproc_per_node 1` runs the whole DDP path (NCCL or gloo, the DDP wrapper, every
    collective) on a machine with a single GPU.
    """
    want_cuda = resolve_device(cfg.device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not all(k in os.environ for k in _TORCHRUN_ENV):
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
    return Dist(dist.get_rank(), dist.get_world_size(), device, ddp=True), started


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


# A label whose validate studies lack a class gets this threshold, as in `cxr evaluate`.
DEFAULT_THRESHOLD = 0.5


def _study_scores(study_ids: np.ndarray, probs: np.ndarray, raw: np.ndarray, labels):
    """(targets, probabilities) per validate study, as `cxr evaluate` forms them by default.

    A study's probability is the mean of its images' (`metrics.aggregate_studies`); its targets are
    `metrics.eval_targets` of its raw labels: blank negative, uncertain (-1) left out, whatever the
    training policy made of either, so runs trained under different policies are validated on the
    same rows.
    """
    import polars as pl

    from cxr.stats.metrics import aggregate_studies, eval_targets

    names = list(labels)
    frame = pl.DataFrame({"study_id": np.asarray(study_ids, dtype=np.int64)}).hstack(
        pl.DataFrame(np.asarray(probs, dtype=np.float64), schema=names, orient="row")
    )
    study_probs = aggregate_studies(frame, names).select(names).to_numpy()
    _, first = np.unique(study_ids, return_index=True)  # sorted study ids, as aggregate_studies
    return eval_targets(raw[first]), study_probs  # labels are per study: any image's row will do


def validation_thresholds(study_ids, probs, raw, labels) -> dict[str, float]:
    """Each label's Youden threshold on the validate studies (`_study_scores`): the operating
    point `cxr evaluate` calls youden, recorded in the checkpoint for `cxr predict --thresholds
    validate`. DEFAULT_THRESHOLD where validate lacks a class."""
    from cxr.stats.metrics import youden_threshold

    y, study_probs = _study_scores(study_ids, probs, raw, labels)
    out = {}
    for j, name in enumerate(labels):
        keep = np.isfinite(y[:, j])
        t = youden_threshold(y[keep, j], study_probs[keep, j])
        out[name] = DEFAULT_THRESHOLD if t is None else t
    return out


def validation_aurocs(study_ids: np.ndarray, probs: np.ndarray, raw: np.ndarray, labels) -> dict:
    """Study-level AUROC per label, scored as `cxr evaluate` scores it by default
    (`_study_scores`). None where a label lacks one of the two classes."""
    from sklearn.metrics import roc_auc_score

    names = list(labels)
    y, study_probs = _study_scores(study_ids, probs, raw, labels)
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


@dataclass
class Run:
    """The fixed parts of one training invocation, built by `setup` and read by every step."""

    cfg: TrainConfig
    d: Dist
    out: Path
    train_ds: CxrDataset
    val_ds: CxrDataset
    train_loader: BatchLoader
    val_loader: BatchLoader
    model: torch.nn.Module  # the plain module: what checkpoints save
    fwd: torch.nn.Module  # validation's forward (compiled or not; never DDP)
    net: torch.nn.Module  # training's forward (DDP averages gradients across ranks)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pos_weight: torch.Tensor | None
    one_class: frozenset[str]  # labels left out of macro AUROC (one class among train images)
    preprocess: dict  # the checkpoint's preprocess block
    views: list[str] = field(default_factory=list)  # the train split's view positions

    @property
    def cuda(self) -> bool:
        return self.d.device.type == "cuda"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def autocast(self):
        if self.cuda and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda and self.cfg.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass
class RunState:
    """What changes each epoch; last.pt carries all of it across a resume."""

    epoch: int = 0  # the last completed epoch
    best_score: float = float("nan")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[str] = field(default_factory=list)  # metrics.jsonl lines, epochs 1..epoch

    def update(self, epoch: int, score: float) -> bool:
        """Record epoch's validate score; True when it is the new best (the first always is)."""
        self.epoch = epoch
        improved = self.best_epoch == 0 or _better(score, self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return improved


# -- setup ------------------------------------------------------------------------------------


def _stale_temporaries(out: Path) -> list[Path]:
    """Temporary files an atomic write of this run left when it was killed mid-write."""
    names = ("last.pt", "best.pt", "metrics.jsonl", "config.toml")
    return [p for name in names for p in out.glob(f".{name}.*.tmp") if p.is_file()]


def _check_out(cfg: TrainConfig, resume: bool) -> None:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out}: is a file; --out must be a directory")
    if resume:
        if not out.is_dir() or not any(out.iterdir()):
            raise CxrError(
                f"{out / 'last.pt'}: nothing to resume (no run in {out}); "
                f"`cxr train --out {out}` without --resume starts one"
            )
    elif (out / "last.pt").exists() or (out / "best.pt").exists():
        raise CxrError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )


def _resume_state(run: Run, ckpt: dict) -> RunState:
    """Restore model, optimizer, schedule and RNG from last.pt; the epoch counters it holds."""
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"])
    return RunState(
        epoch=int(ckpt["epoch"]),
        best_score=float(ckpt["best_score"]),
        best_epoch=int(ckpt["best_epoch"]),
        bad_epochs=int(ckpt["bad_epochs"]),
    )


def setup(cfg: TrainConfig, resume: bool, d: Dist) -> tuple[Run, RunState]:
    """Check the run directory, seed, read the data, build model, optimizer and schedule.

    With `resume`, restores the state of last.pt; a run directory without a last.pt (killed
    before its first epoch was saved) starts again from epoch 1, as a fresh run would. Writes
    nothing.
    """
    _check_out(cfg, resume)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not cfg.manifest or not cfg.cache:
        raise CxrError("config: manifest and cache paths must be set")
    ckpt = None
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_compatible(ckpt, arch=cfg.model, labels=cfg.labels, path=last_path)
        if "optimizer" not in ckpt:
            raise CxrError(f"{last_path}: no resume state in this checkpoint")
    elif resume:
        if best_path.exists():  # never overwrite the best model of another kind of run
            best = load_checkpoint(best_path)
            check_compatible(best, arch=cfg.model, labels=cfg.labels, path=best_path)
        _warn(d, f"no last.pt in {out}: no epoch was saved in full; starting again at epoch 1")
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
    preprocess = {
        "image_size": cfg.image_size,
        "source_size": cache.size,
        "mean": cfg.mean,
        "std": cfg.std,
        "in_chans": IN_CHANS,
        "method": str(cache.meta.get("method", "")),
    }
    train_ds = CxrDataset(manifest, cache, "train", cfg.labels, cfg.policy, cfg.label_source)
    val_ds = CxrDataset(manifest, cache, "validate", cfg.labels, cfg.policy, cfg.label_source)
    views = sorted(
        manifest.filter(manifest["split"] == "train")["view_position"].drop_nulls().unique()
    )
    del manifest  # subject_id (and the demographic columns) go no further than this point
    for ds in (train_ds, val_ds):
        if ds.n_unlabelled:
            _warn(d, f"{ds.n_unlabelled} {ds.split} images left out: their study has no NegBio row")
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
    pretrained = None if ckpt is not None else (cfg.pretrained or None)
    model = create_model(cfg.model, len(cfg.labels), IN_CHANS, pretrained, labels=cfg.labels)
    if ckpt is not None:
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
    if d.ddp:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if cuda else None
        )
        if cfg.compile:
            net = torch.compile(net)
    run = Run(
        cfg=cfg,
        d=d,
        out=out,
        train_ds=train_ds,
        val_ds=val_ds,
        train_loader=train_loader,
        val_loader=val_loader,
        model=model,
        fwd=fwd,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        pos_weight=pos_weight,
        one_class=frozenset(no_pos) | frozenset(no_neg),
        preprocess=preprocess,
        views=[str(v) for v in views],
    )
    state = RunState() if ckpt is None else _resume_state(run, ckpt)
    if ckpt is not None:
        state.history = _history(ckpt, run.metrics_path)
    return run, state


def _history(last: dict, metrics_path: Path) -> list[str]:
    """The metrics.jsonl lines of epochs 1..last.pt's epoch.

    last.pt holds them; a last.pt written before it did is matched with the file's own lines,
    dropping any of later epochs (a kill after metrics.jsonl but before last.pt was written).
    """
    if isinstance(last.get("history"), list):
        return [str(line) for line in last["history"]]
    if not metrics_path.exists():
        return []
    kept = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(epoch, int) and epoch <= int(last["epoch"]):
            kept.append(line)
    return kept


# -- outputs (rank 0 alone) ------------------------------------------------------------------


def open_outputs(run: Run, state: RunState, resumed: bool):
    """`repair_outputs`, then the TensorBoard writer."""
    repair_outputs(run, state, resumed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorboard's own deprecation noise
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run.out / "tb"), purge_step=state.epoch + 1)


def repair_outputs(run: Run, state: RunState, resumed: bool) -> None:
    """Make the run directory consistent with `state` and write config.toml.

    Removes temporary files a killed run left, rewrites metrics.jsonl to the epochs of last.pt,
    and rewrites best.pt from last.pt when a kill fell between the two on the epoch that was best.
    """
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    for tmp in _stale_temporaries(out):
        tmp.unlink(missing_ok=True)
    write_text_atomic(out / "config.toml", config_to_toml(run.cfg))
    if resumed:
        if state.history:
            write_text_atomic(run.metrics_path, "\n".join(state.history) + "\n")
        else:
            run.metrics_path.unlink(missing_ok=True)
    if state.best_epoch and state.best_epoch == state.epoch:
        best_epoch = None
        if run.best_path.exists():
            with contextlib.suppress(CxrError):
                best_epoch = load_checkpoint(run.best_path).get("epoch")
        if best_epoch != state.epoch:
            save_checkpoint(run.best_path, without_resume_state(load_checkpoint(run.last_path)))


def save_epoch(run: Run, state: RunState, record: dict, val: dict, improved: bool, writer) -> None:
    """Save epoch `state.epoch`: last.pt, then best.pt (if improved), then metrics.jsonl, then tb.

    The order makes every kill resumable: last.pt is the run's state and carries the metrics
    lines, so metrics.jsonl is rewritten from it on resume, and a best.pt that a kill kept from
    being written is rewritten from last.pt (whose model it is). Each file is written atomically.
    """
    cfg, epoch = run.cfg, state.epoch
    state.history.append(json.dumps(json_safe(record)))
    ckpt = make_checkpoint(
        run.model,
        arch=cfg.model,
        labels=cfg.labels,
        preprocess=run.preprocess,
        label_policy=cfg.policy.to_dict(),
        config=config_to_dict(cfg),
        epoch=epoch,
        val_metrics=json_safe(val),
        thresholds={
            "youden": dict(val["val_youden_thresholds"]),
            "chosen_on": "validate split, study level, CheXpert labels, uncertain excluded",
        },
        views=run.views,
    )
    resume_state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": _rng_state(),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "history": list(state.history),
    }
    save_checkpoint(run.last_path, {**ckpt, **resume_state})
    if improved:
        save_checkpoint(run.best_path, ckpt)
    write_text_atomic(run.metrics_path, "\n".join(state.history) + "\n")
    writer.add_scalar("train/loss", record["train_loss"], epoch)
    writer.add_scalar("train/images_per_s", record["images_per_s"], epoch)
    writer.add_scalar("train/lr", record["lr"], epoch)
    writer.add_scalar("val/loss", val["val_loss"], epoch)
    writer.add_scalar("val/macro_auroc", val["val_macro_auroc"], epoch)
    for name, value in val["val_auroc"].items():
        if value is not None:
            writer.add_scalar(f"val_auroc/{name}", value, epoch)
    writer.flush()


# -- one epoch ----------------------------------------------------------------------------------


def train_one_epoch(run: Run, epoch: int, state: RunState) -> tuple[float, float]:
    """One pass over this rank's batches of the epoch: (mean train loss over all ranks, images/s).

    The batch order and augmentation depend on (seed, epoch, rank) alone, so any epoch can be
    rerun exactly. A non-finite loss stops the run (CxrError) before anything is saved.
    """
    cfg, d = run.cfg, run.d
    run.net.train()
    run.train_loader.set_epoch(epoch)
    # Augmentation draws from its own generator, seeded per epoch and rank: resumable.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + d.rank)
    loss_sum = torch.zeros((), device=d.device)
    seen = 0
    steps = run.steps_per_epoch
    t0 = time.perf_counter()
    with make_progress(_fields_column()) if d.main else _NoBar() as bar:
        task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps, stats="")
        for step, batch in enumerate(run.train_loader, 1):
            batch = batch.to(d.device, non_blocking=True)
            x = train_transform(batch.img, cfg.image_size, cfg.mean, cfg.std, cfg.augment, gen)
            x = run.model_input(x)
            with run.autocast():
                logits = run.net(x)
            loss = masked_bce(logits, batch.labels, batch.mask, run.pos_weight)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            loss_sum += loss.detach() * len(batch.img)
            seen += len(batch.img)
            if step % 10 == 0 or step == steps:
                # One host sync every few steps: the loss for the bar and the NaN check.
                mean_loss = float(loss_sum) / seen
                if not d.ddp and not math.isfinite(mean_loss):
                    _nan_stop(epoch, step, run.best_path, state.best_epoch, state.best_score)
                rate = seen * d.world / (time.perf_counter() - t0)
                bar.update(task, completed=step, stats=f"loss {mean_loss:.4f}  {rate:,.0f} img/s")
            else:
                bar.update(task, completed=step)  # the bar moves every step, without a sync
    if d.ddp:
        # On the training device: NCCL reduces CUDA tensors only (gloo takes the CPU's).
        totals = torch.tensor([float(loss_sum), float(seen)], dtype=torch.float64, device=d.device)
        dist.all_reduce(totals)
        train_loss, seen_all = float(totals[0] / totals[1]), int(totals[1])
    else:
        train_loss, seen_all = float(loss_sum) / max(seen, 1), seen
    if not math.isfinite(train_loss):
        _nan_stop(epoch, steps, run.best_path, state.best_epoch, state.best_score)
    return train_loss, seen_all / (time.perf_counter() - t0)


# -- validation ---------------------------------------------------------------------------------


def validate(run: Run, epoch: int, state: RunState) -> dict:
    """Validate-split logits from every rank -> loss (training masks), study-level AUROC.

    Returns {"val_loss", "val_macro_auroc", "val_auroc": {label: AUROC or None}}; the macro
    leaves out labels without both classes among train images. Changes no weights.
    """
    cfg, d = run.cfg, run.d
    if d.ddp:
        # DDP syncs BatchNorm running stats from rank 0 only at the start of each training
        # forward; each rank then updated its own. Score rank 0's model (the one saved).
        for buf in run.model.buffers():
            dist.broadcast(buf, 0)
    run.fwd.eval()
    parts_pos, parts_logits = [], []
    with torch.no_grad(), make_progress() if d.main else _NoBar() as bar:
        task = bar.add_task(f"validate {epoch}/{cfg.epochs}", total=len(run.val_loader))
        for batch in run.val_loader:
            batch = batch.to(d.device)
            x = run.model_input(eval_transform(batch.img, cfg.image_size, cfg.mean, cfg.std))
            with run.autocast():
                logits = run.fwd(x)
            parts_pos.append(batch.positions.cpu())
            parts_logits.append(logits.float().cpu())
            bar.advance(task)
    pos = torch.cat(parts_pos) if parts_pos else torch.zeros(0, dtype=torch.long)
    logits = torch.cat(parts_logits) if parts_logits else torch.zeros(0, len(cfg.labels))
    if d.ddp:
        gathered: list = [None] * d.world
        dist.all_gather_object(gathered, (pos, logits))
        pos = torch.cat([p for p, _ in gathered])
        logits = torch.cat([lg for _, lg in gathered])
    order = torch.argsort(pos)
    pos, logits = pos[order], logits[order]
    if not torch.isfinite(logits).all():
        _nan_stop(epoch, "validation", run.best_path, state.best_epoch, state.best_score)
    val_ds = run.val_ds
    # The loss under the training policy's masks; the AUROC as evaluation scores it.
    val_loss = float(masked_bce(logits, val_ds.targets[pos], val_ds.mask[pos]))
    aurocs = validation_aurocs(
        val_ds.study_ids[pos.numpy()],
        torch.sigmoid(logits).numpy(),
        val_ds.raw_labels[pos.numpy()],
        cfg.labels,
    )
    counted = [v for k, v in aurocs.items() if v is not None and k not in run.one_class]
    macro = float(np.mean(counted)) if counted else float("nan")
    thresholds = validation_thresholds(
        val_ds.study_ids[pos.numpy()],
        torch.sigmoid(logits).numpy(),
        val_ds.raw_labels[pos.numpy()],
        cfg.labels,
    )
    return {
        "val_loss": val_loss,
        "val_macro_auroc": macro,
        "val_auroc": aurocs,
        "val_youden_thresholds": thresholds,
    }


# -- the loop -----------------------------------------------------------------------------------


def _train(cfg: TrainConfig, resume: bool, d: Dist) -> dict:
    run, state = setup(cfg, resume, d)
    cfg = run.cfg  # with the cache size actually read
    stopped = bool(cfg.patience) and state.bad_epochs >= cfg.patience
    if resume and state.epoch and (state.epoch >= cfg.epochs or stopped):
        # A finished run resumed (`make train` twice): nothing to train. What a kill during its
        # last save left is still repaired.
        if d.main:
            repair_outputs(run, state, resumed=True)
            why = "early stopping" if stopped and state.epoch < cfg.epochs else "its last epoch"
            info(f"{run.out}: the run is complete (epoch {state.epoch} of {cfg.epochs}, {why})")
        return {
            "best_epoch": state.best_epoch,
            "best_val_macro_auroc": state.best_score,
            "last_epoch": state.epoch,
            "stopped_early": stopped,
            "out": str(run.out),
            "rank": d.rank,
        }
    writer = None
    if d.main:
        writer = open_outputs(run, state, resumed=resume)
        info(
            f"train: {len(run.train_ds)} images, validate: {len(run.val_ds)} images, {cfg.model} "
            f"at {cfg.image_size} px on {d.device.type} x{d.world}"
            f"{f' (DDP {dist.get_backend()})' if d.ddp else ''}, "
            f"{run.steps_per_epoch} steps/epoch"
        )
    stopped_early = False
    epoch = state.epoch
    try:
        for epochs_now, epoch in enumerate(range(state.epoch + 1, cfg.epochs + 1), 1):
            t0 = time.perf_counter()
            train_loss, images_per_s = train_one_epoch(run, epoch, state)
            val = validate(run, epoch, state)
            improved = state.update(epoch, val["val_macro_auroc"])
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **val,
                "images_per_s": images_per_s,
                "lr": run.optimizer.param_groups[0]["lr"],
                "label_policy": cfg.policy.to_dict(),
            }
            if d.main:
                save_epoch(run, state, record, val, improved, writer)
                # One line per epoch: with a timestamp where no bar is drawn (a Slurm log).
                info(
                    f"{log_stamp()}epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, "
                    f"val loss {val['val_loss']:.4f}, val macro AUROC {val['val_macro_auroc']:.4f}"
                    f"{' (best)' if improved else ''}, {time.perf_counter() - t0:.1f} s, "
                    f"{images_per_s:,.0f} img/s"
                )
            if cfg.patience and state.bad_epochs >= cfg.patience:
                stopped_early = True
                if d.main:
                    info(f"early stop: no better validate macro AUROC for {cfg.patience} epochs")
                break
            if cfg.stop_after_epochs and epochs_now >= cfg.stop_after_epochs:
                break
    finally:
        if writer is not None:
            writer.close()
    if d.ddp:
        dist.barrier()  # nobody exits before rank 0 has written
    return {
        "best_epoch": state.best_epoch,
        "best_val_macro_auroc": state.best_score,
        "last_epoch": epoch,
        "stopped_early": stopped_early,
        "out": str(run.out),
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

    def advance(self, *args, **kwargs) -> None:
        return None
