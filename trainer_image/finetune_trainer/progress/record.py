"""The progress record (its model lives in the API, shared with the operator) and RFC 3339 stamps."""

from __future__ import annotations

from datetime import UTC, datetime

from finetune_api.progress import MESSAGE_MAX, PROGRESS_KEY, ProgressRecord, TrainerPhase

__all__ = ["MESSAGE_MAX", "PROGRESS_KEY", "ProgressRecord", "TrainerPhase", "rfc3339_utc"]


def rfc3339_utc(moment: datetime) -> str:
    """``2025-01-31T12:00:00Z``: the form Kubernetes uses for timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
