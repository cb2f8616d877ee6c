"""CPU time of a worker, the same way on both sides (stdlib only: the peer's venv imports it by path)."""

from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the map workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
