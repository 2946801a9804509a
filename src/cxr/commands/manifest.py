"""`cxr manifest`: select images and studies from the three CSVs into the manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build data/processed/manifest.parquet from the three CSVs (PA, official split, 15k studies)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", type=Path, help="raw root (default: <data dir>/raw)")
    p.add_argument(
        "--out", type=Path, help="manifest path (default: <data dir>/processed/manifest.parquet)"
    )
    p.add_argument("--n-studies", type=int, default=15000, help="studies in total (default 15000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train-study draw (default 0)")
    p.add_argument(
        "--views",
        nargs="+",
        default=["PA"],
        metavar="VIEW",
        help="ViewPosition values to keep (default PA), e.g. --views PA AP",
    )
    p.add_argument(
        "--infer-missing-views",
        action="store_true",
        help="recover a blank ViewPosition from ViewCodeSequence_CodeMeaning",
    )
    p.add_argument(
        "--require-reports",
        action="store_true",
        help="exclude (and count) studies whose report is not under files/",
    )
    # --X requires the source, --no-X leaves it out, neither: used when present.
    p.add_argument(
        "--demographics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sex, age, race group and insurance from MIMIC-IV (<raw>/mimiciv/<version>/hosp/): "
        "added when the files are present (default), required with --demographics, left out "
        "with --no-demographics",
    )
    p.add_argument(
        "--mimic-iv-version",
        default=None,
        help="the MIMIC-IV version under <raw>/mimiciv/ to read (default: the newest present)",
    )
    p.add_argument(
        "--negbio",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the NegBio labels (negbio_<Label> columns) from mimic-cxr-2.0.0-negbio.csv.gz: "
        "added when the file is present (default), required with --negbio, left out with "
        "--no-negbio",
    )


_MODE = {None: "auto", True: "require", False: "off"}


def run(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.mimic.manifest import ManifestConfig, make_manifest
    from cxr.mimic.summary import print_manifest_summary

    paths = args.paths
    views = tuple(v.strip() for arg in args.views for v in arg.split(",") if v.strip())
    if args.n_studies < 1:
        raise CxrError("--n-studies must be at least 1")
    cfg = ManifestConfig(
        raw=args.raw or paths.raw,
        out=args.out or paths.manifest,
        n_studies=args.n_studies,
        seed=args.seed,
        views=views,
        infer_missing_views=args.infer_missing_views,
        require_reports=args.require_reports,
        demographics=_MODE[args.demographics],
        mimic_iv_version=args.mimic_iv_version,
        negbio=_MODE[args.negbio],
    )
    _, info = make_manifest(cfg)
    print_manifest_summary(info, cfg.out)
    if info.get("synthetic_demo"):
        from cxr.core.progress import info as say
        from cxr.mimic.synthetic import DEMO_NOTE

        say(DEMO_NOTE)
    return 0
