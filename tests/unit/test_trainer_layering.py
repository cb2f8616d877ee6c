"""The trainer's parts depend on each other one way: no import cycle between its subpackages and
top-level modules (evaluate writes through workspace, and never imports train, which calls it).

Read from the sources with ``ast`` (nothing is imported), lazy imports inside functions included.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = "finetune_trainer"
ROOT = Path(__file__).resolve().parents[2] / "trainer_image" / PACKAGE


def part_of(module: tuple[str, ...]) -> str:
    """The part a module belongs to: its subpackage (``train``), or itself at the top (``run``)."""
    return module[0]


def imported_parts(path: Path) -> set[str]:
    """The parts of the package that the module at ``path`` imports, its own left out."""
    module = path.relative_to(ROOT).with_suffix("").parts
    package = module[:-1]  # what a relative import starts from (an __init__ too: its folder)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            named = node.module.split(".") if node.module else []
            targets = [base + named] if named or base else [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            targets = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
        else:
            continue
        found |= {t[0] for t in targets if t}
    return found - {part_of(module)}


def dependencies() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        part = part_of(path.relative_to(ROOT).with_suffix("").parts)
        graph.setdefault(part, set()).update(imported_parts(path))
    return graph


def test_the_reader_sees_the_imports_it_is_meant_to() -> None:
    graph = dependencies()
    assert {"train", "evaluate", "data", "workspace", "run"} <= graph.keys()
    assert {"evaluate", "workspace", "data"} <= graph["train"]  # relative imports, two levels
    assert "train" in graph["run"]  # a lazy import inside a function


def test_no_import_cycle_between_the_trainers_parts() -> None:
    graph = dependencies()
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"an import cycle between finetune_trainer's parts: {exc.args[1]}") from None
    assert order.index("workspace") < order.index("evaluate") < order.index("train") < order.index("run")
