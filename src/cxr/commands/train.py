"""`cxr train`: train a classifier on the manifest and image cache (one GPU, CPU, or torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

HELP = "train a multi-label classifier on the manifest and image cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TOML file of config keys (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config keys, dotted for nested ones: epochs=3 model=resnet18 "
        "policy.uncertain=ones 'policy.overrides.Edema.uncertain=ones' (--print-config lists them)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt (its config.toml is the base config)",
    )
    parser.add_argument("--out", help="run directory (default: the config's out, models/run)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (every key, its default and meaning) and exit",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.progress import info
    from cxr.training.config import describe_config, load_train_config, read_toml

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
    if args.print_config:
        print(describe_config(cfg), end="")
        return 0
    cfg = resolve_inputs(cfg, args.paths)

    from cxr.mimic.synthetic import DEMO_NOTE, manifest_is_demo

    if manifest_is_demo(Path(cfg.manifest)):
        info(DEMO_NOTE)

    from cxr.training.train import train

    summary = train(cfg, resume=args.resume)
    if summary.get("rank", 0) == 0:
        done = (
            ""
            if summary["last_epoch"] >= cfg.epochs or summary["stopped_early"]
            else (
                f"; stopped after epoch {summary['last_epoch']} of {cfg.epochs}: "
                f"`cxr train --resume --out {summary['out']}` goes on"
            )
        )
        info(
            f"best epoch {summary['best_epoch']}: validate macro AUROC "
            f"{summary['best_val_macro_auroc']:.4f}; outputs in {summary['out']}{done}"
        )
        info(f"next: `cxr evaluate --checkpoint {Path(summary['out']) / 'best.pt'}`")
    return 0


def resolve_inputs(cfg, paths):
    """The config with its manifest and cache made absolute paths: the data root's when not set,
    the cache chosen to serve `image_size` (`cxr.imaging.cache.choose_cache`). config.toml records
    them, so `--resume` and `cxr evaluate` find the run's data from any directory."""
    from cxr.imaging.cache import choose_cache

    manifest = Path(cfg.manifest) if cfg.manifest else paths.manifest
    if cfg.cache:
        cache = Path(cfg.cache)
    else:
        cache = choose_cache(paths.interim, manifest, cfg.image_size, cfg.cache_size)
    # abspath, not resolve(): `..` goes, symbolic links of the user's layout stay
    return dataclasses.replace(
        cfg, manifest=os.path.abspath(manifest), cache=os.path.abspath(cache)
    )


def interrupted(args: argparse.Namespace) -> str:
    where = (f" --config {args.config}" if args.config else "") + (
        f" --out {args.out}" if args.out else ""
    )
    return f"`cxr train --resume{where}` continues from the last completed epoch"


def _toml_str(text: str) -> str:
    import json

    return json.dumps(text)
