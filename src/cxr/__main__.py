"""`python -m cxr ...`, which is also what `torchrun -m cxr train ...` runs."""

from cxr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
