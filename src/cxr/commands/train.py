"""`cxr train`: train a classifier on the manifest and image cache (one GPU, CPU, or torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

HELP = "train a multi-label classifier on the manifest and image cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TOML file of TrainConfig keys (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, dotted for nested keys: epochs=3 model=resnet18 "
        "policy.uncertain=ones 'policy.overrides.Edema.uncertain=ones'",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt (its config.toml is the base config)",
    )
    parser.add_argument("--out", help="run directory (default: models/run, or the config's out)")


def run(args: argparse.Namespace) -> int:
    from cxr.core.paths import DataPaths, data_root
    from cxr.core.progress import info
    from cxr.training.config import load_train_config, read_toml

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={_toml_str(args.out)}")
    base = None
    if args.resume:
        # The run's own resolved config, so a resume needs no repeated options.
        out = Path(args.out) if args.out else Path(load_train_config(args.config, overrides).out)
        if (out / "config.toml").exists():
            base = read_toml(out / "config.toml")
    cfg = load_train_config(args.config, overrides, base=base)
    paths = DataPaths(data_root(args.data_dir))
    cache_size = cfg.cache_size or cfg.image_size
    cfg = dataclasses.replace(
        cfg,
        manifest=cfg.manifest or str(paths.manifest),
        cache=cfg.cache or str(paths.cache(cache_size)),
    )

    from cxr.training.train import train

    summary = train(cfg, resume=args.resume)
    if summary.get("rank", 0) == 0:
        info(
            f"best epoch {summary['best_epoch']}: validate macro AUROC "
            f"{summary['best_val_macro_auroc']:.4f}; outputs in {summary['out']}"
        )
    return 0


def _toml_str(text: str) -> str:
    import json

    return json.dumps(text)
