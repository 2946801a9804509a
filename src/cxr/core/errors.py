"""Expected failures.

Anything the user can cause (a missing file, a bad CSV, a wrong option) raises `CxrError` with a
one-line message naming the file and the problem; the CLI prints it and exits 1, never a traceback.
"""


class CxrError(Exception):
    """An expected failure, explained in one line."""


class InputError(CxrError):
    """An input file is missing, unreadable or malformed."""
