"""The package layering (README, Module map; docs/architecture.md), read from the source with `ast`.

Every import counts, at module level or inside a function: a lazy import still ties the two
packages together. tests/test_cli.py checks the same torch-free promise at run time, by running
the commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# A package may import only packages of a lower rank (and itself). Equal ranks are independent.
RANKS = {
    "": 0,  # cxr/__init__.py: the version
    "core": 0,
    "mimic": 1,
    "imaging": 2,
    "stats": 2,
    "training": 3,
    "inference": 4,
    "pretrained": 4.5,  # published and foundation models: above inference, below evaluation
    "evaluation": 5,
    "verify": 6,
    "view": 6,
    "commands": 7,
    "cli": 8,
    "__main__": 9,
}
TORCH_FREE_COMMANDS = ("verify", "manifest", "download", "demo", "reports")
TORCH_LIKE = {"torch", "torchvision", "timm"}


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under src (packages by their __init__)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, wherever it stands.

    `from a.b import c` names the module a.b.c when that is a module, else a.b; relative imports
    are resolved against the module's own package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in known else base, node.lineno))
    return found


def stage(module: str, root: str = "cxr") -> str | None:
    """The package of a first-party module ('' for the root package), None for others."""
    parts = module.split(".")
    if parts[0] != root:
        return None
    return parts[1] if len(parts) > 1 else ""


def upward_imports(src: Path, root: str = "cxr", ranks: dict[str, int] = RANKS) -> list[str]:
    known = modules(src)
    problems = []
    for name, path in known.items():
        own = stage(name, root)
        if own is None:
            continue
        for target, line in imports(name, path, known):
            other = stage(target, root)
            if other is None or other == own:
                continue
            if other not in ranks or own not in ranks:
                problems.append(f"{path.name}:{line}: {name} -> {target}: package not ranked")
            elif ranks[other] >= ranks[own]:
                problems.append(f"{path.relative_to(src)}:{line}: {name} imports {target}")
    return problems


def reachable(src: Path, start: str) -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level names) reachable from `start` through every
    import, parent packages included (importing a.b.c runs a/__init__ and a/b/__init__)."""
    known = modules(src)
    seen, outside, todo = set(), set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for target, _ in imports(name, known[name], known):
            if target.split(".")[0] == start.split(".")[0]:
                todo.append(target)
            else:
                outside.add(target.split(".")[0])
    return seen, outside


def test_no_package_imports_one_above_it():
    assert upward_imports(SRC) == []


def test_every_package_is_ranked():
    stages = {stage(name) for name in modules(SRC)}
    assert stages <= RANKS.keys(), stages - RANKS.keys()


def test_torch_free_commands_never_reach_torch():
    for command in TORCH_FREE_COMMANDS:
        first_party, third_party = reachable(SRC, f"cxr.commands.{command}")
        assert f"cxr.commands.{command}" in first_party
        assert not third_party & TORCH_LIKE, (command, sorted(third_party & TORCH_LIKE))


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    """The checks can fail: an upward import hidden in a function, or written relative, is found."""
    pkg = tmp_path / "cxr"
    for sub in ("core", "mimic", "training", "commands"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "errors.py").write_text("def f():\n    from cxr.training import train\n")
    (pkg / "mimic" / "schema.py").write_text("from ..training.train import go\n")
    (pkg / "training" / "train.py").write_text("import torch\nfrom cxr.core import errors\n")
    (pkg / "commands" / "demo.py").write_text("def run():\n    from cxr.mimic import schema\n")
    assert upward_imports(tmp_path) == [
        "cxr/core/errors.py:2: cxr.core.errors imports cxr.training.train",
        "cxr/mimic/schema.py:1: cxr.mimic.schema imports cxr.training.train",
    ]
    first_party, third_party = reachable(tmp_path, "cxr.commands.demo")
    assert "cxr.training.train" in first_party and "torch" in third_party
