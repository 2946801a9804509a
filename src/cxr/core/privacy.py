"""Keep patient identifiers out of everything that leaves data/.

MIMIC-CXR paths name the patient (`files/p10/p10000032/s50414267/...`): any path that is printed,
logged or written to an output goes through `mask_subject` first. The study folder and the
dicom_id (the file name) stay, so a masked path still identifies the image.
"""

from __future__ import annotations

import re

# A `p` followed by exactly 8 digits, as a whole path component or name prefix.
_SUBJECT_DIR_RE = re.compile(r"(?<![A-Za-z0-9])p\d{8}(?!\d)")
MASK = "p********"


def mask_subject(text: str) -> str:
    """`files/p10/p10000032/s50414267/x.jpg` -> `files/p10/p********/s50414267/x.jpg`."""
    return _SUBJECT_DIR_RE.sub(MASK, text)
