"""The operator's handlers in one importable module: `kopf run -m finetune_operator.main`."""

from __future__ import annotations

from .handlers import finetunejob, startup, tasks

__all__ = ["finetunejob", "startup", "tasks"]
