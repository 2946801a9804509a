"""`cxr demo`: write a synthetic MIMIC-CXR-JPG tree (real layout and schemas, planted signal)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_PATIENTS = 160  # cxr.mimic.demo.DEFAULT_PATIENTS (not imported: parsing stays light)
HELP = "write a synthetic MIMIC-CXR-JPG tree in the real layout (no credentials needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output directory (default: <data root>/raw)")
    parser.add_argument(
        "--n-patients",
        type=int,
        default=DEMO_PATIENTS,
        help=f"patients (default: {DEMO_PATIENTS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="longer side of the JPEGs (default: 256; 3056 gives the real 3056 x 2544 geometry)",
    )


def run(args: argparse.Namespace) -> int:
    from cxr.core.progress import bars_enabled, info
    from cxr.mimic.demo import MIMIC_IV_VERSION, write_demo

    out = Path(args.out) if args.out else args.paths.raw
    s = write_demo(out, args.n_patients, args.seed, args.image_size, progress=bars_enabled())
    # Counts only: never a subject_id.
    info(f"demo: wrote {s.n_images} images ({s.image_size} px) to {out}")
    for split in ("train", "validate", "test"):
        info(
            f"  {split:<8}  {s.patients[split]:>5} patients  {s.studies[split]:>6} studies  "
            f"{s.images[split]:>6} images  {s.pa_images[split]:>5} PA images"
        )
    views = ", ".join(f"{v or '(missing)'} {n}" for v, n in s.views.items())
    info(f"  views: {views}")
    info(
        f"  {len(s.missing_label_studies)} studies without a label row, "
        f"{len(s.blank_label_studies)} with every label blank"
    )
    info(f"  {len(s.radiologist_labels)} test studies with radiologist labels")
    info(f"  {len(s.negbio_labels)} studies with NegBio labels")
    info(
        f"  MIMIC-IV {MIMIC_IV_VERSION} demographics: "
        f"{len(s.sexes) - len(s.absent_from_mimic_iv)} of {len(s.sexes)} patients "
        f"({len(s.absent_from_mimic_iv)} absent), {s.admissions} admissions"
    )
    return 0
