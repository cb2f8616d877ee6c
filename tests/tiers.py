"""Wall time by test tier, printed at the end of every run: where the suite's minutes go.

A tier is the directory under ``tests/`` (unit, trainer, e2e, bench). Tests run one after the
other, so the sum of each test's setup, call and teardown is the tier's share of the run; a
session fixture (the control plane, S3, Prometheus) counts towards the tier of the test that
first needed it.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

_seconds: Counter[str] = Counter()
_tests: Counter[str] = Counter()
_started = time.perf_counter()


def tier(nodeid: str) -> str:
    """``tests/e2e/test_x.py::test_y`` → ``e2e``; a test outside a tier directory → ``other``."""
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"


def minutes(seconds: float) -> str:
    """``754.2`` → ``12 min 34 s``."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{seconds:.1f} s"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name = tier(report.nodeid)
    _seconds[name] += report.duration
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _tests[name] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tests:
        return
    terminalreporter.write_sep("-", "wall time by tier")
    for name, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{name:<8} {_tests[name]:>5} tests  {minutes(seconds)}")
    total = time.perf_counter() - _started
    terminalreporter.write_line(
        f"{'all':<8} {sum(_tests.values()):>5} tests  {minutes(total)} (with collection)"
    )
