"""The registry of performance twins (finetune_trainer.fastpaths) stays true: every fast and reference
path imports, every fast module points at the registry, and every named equality test exists.

The equality tests themselves train tiny models and run in tests/trainer; here they are only found."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.fastpaths import FAST_PATHS, FastPath

ROOT = Path(__file__).resolve().parents[2]
POINTER = "Fast path: see finetune_trainer.fastpaths"


def resolve(path: str) -> Any:
    """The object a ``module:qualname`` path names."""
    module_name, _, qualname = path.partition(":")
    assert module_name and qualname, f"{path!r} is not module:qualname"
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def defined_tests(test_file: Path) -> set[str]:
    """Names of the module-level test functions of ``test_file`` (read, never run)."""
    tree = ast.parse(test_file.read_text(), filename=str(test_file))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


@pytest.fixture(params=FAST_PATHS, ids=lambda entry: entry.name)
def entry(request: pytest.FixtureRequest) -> FastPath:
    return request.param  # type: ignore[no-any-return]


def test_names_are_unique_and_every_field_is_filled() -> None:
    names = [e.name for e in FAST_PATHS]
    assert len(set(names)) == len(names)
    for e in FAST_PATHS:
        assert all((e.name, e.fast, e.reference, e.switch, e.tests, e.why)), e
        assert e.fast != e.reference, e.name


def test_both_paths_import(entry: FastPath) -> None:
    fast, reference = resolve(entry.fast), resolve(entry.reference)
    assert callable(fast) or inspect.isclass(fast), entry.fast
    assert callable(reference) or inspect.isclass(reference), entry.reference


def test_the_fast_module_points_at_the_registry(entry: FastPath) -> None:
    module = importlib.import_module(entry.fast.partition(":")[0])
    assert POINTER in (module.__doc__ or ""), f"{module.__name__}'s docstring lacks {POINTER!r}"


def test_every_fast_module_of_the_trainer_is_listed() -> None:
    """The other way round: a module that calls itself a fast path has an entry."""
    package = ROOT / "trainer_image" / "finetune_trainer"
    pointing = {
        ".".join(path.relative_to(package.parent).with_suffix("").parts)
        for path in package.rglob("*.py")
        if POINTER in (ast.get_docstring(ast.parse(path.read_text())) or "")
    }
    assert pointing == {e.fast.partition(":")[0] for e in FAST_PATHS}


def test_the_named_tests_exist(entry: FastPath) -> None:
    for test_id in entry.tests:
        file, sep, function = test_id.partition("::")
        assert sep and "::" not in function, f"{test_id!r} is not path::function"
        path = ROOT / file
        assert path.is_file(), f"{entry.name}: {file} does not exist"
        assert function in defined_tests(path), f"{entry.name}: {file} has no test function {function}"
