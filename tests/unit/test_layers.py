"""The package layers import only downward: stream -> models -> engine -> services -> cli.

Every import of every module counts, including imports inside functions and under
TYPE_CHECKING: an upward import is a dependency whether it runs at import time or later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "streamval"

# Lower rank = lower layer. A module may import its own package, the foundation and any
# lower rank; packages of the same rank may not import each other.
RANKS = {
    "streamval.errors": 0,
    "streamval.config": 0,
    "streamval.logs": 0,
    "streamval.stream": 1,
    "streamval.stream.contract": 1,
    "streamval.stream.kafka": 2,
    "streamval.stream.datasets": 2,
    "streamval.stream.replay": 3,
    "streamval.models": 4,
    "streamval.engine": 5,
    "streamval.monitoring": 5,
    "streamval.consumers": 6,
    "streamval.backtest": 6,
    "streamval.demo": 7,
    "streamval.commands": 8,
    "streamval.cli": 9,
}


def layer_of(module: str) -> str | None:
    """The longest entry of RANKS that `module` is, or is inside."""
    best = None
    for layer in RANKS:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool = False) -> set[str]:
    """The streamval modules (and names in them) that `source`, the text of `module`, imports."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in out if name.startswith("streamval.")}


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """Imports of a higher layer, or of another package of the same layer (the foundation,
    rank 0, may import itself)."""
    here = layer_of(module)
    assert here is not None, f"{module} has no layer"
    out = []
    for target in sorted(imports_of(module, source, is_package)):
        there = layer_of(target)
        if there is None or there == here:
            continue
        if RANKS[there] > RANKS[here] or (RANKS[there] == RANKS[here] and RANKS[here] > 0):
            out.append(f"{target} ({there}, rank {RANKS[there]})")
    return out


MODULES = sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")


def test_every_module_has_a_layer() -> None:
    assert [module_name(p) for p in MODULES if layer_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_downward(path: Path) -> None:
    module = module_name(path)
    upward = upward_imports(module, path.read_text(), path.name == "__init__.py")
    assert upward == [], f"{module} (rank {RANKS[layer_of(module) or '']}) imports upward: {upward}"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("streamval.models.fake", "from streamval.engine import Engine"),
        ("streamval.models.fake", "def f():\n    from streamval.backtest.methods import x"),
        ("streamval.consumers.fake", "import streamval.backtest.report"),
        ("streamval.stream.contract.fake", "from ..kafka import clients"),
    ],
)
def test_the_checker_catches_upward_imports(module: str, source: str) -> None:
    assert upward_imports(module, source) != []
