"""The contract between the operator's pods and the trainer that runs in them: variable names both read."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Final

REFUSED_EXIT: Final = 3
"""Exit code of a trainer that refuses to start because the output location holds another run (a
different spec): a retry would refuse again, so the training Job fails at once on it."""

# JSON object: Dataset name → folder where that Dataset's credentialsSecret is mounted.
DATASET_CREDENTIALS_ENV = "FINETUNE_DATASET_CREDENTIALS"


def dataset_credentials_dirs(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The per-Dataset credential folders the operator mounted (empty outside a pod)."""
    raw = (os.environ if env is None else env).get(DATASET_CREDENTIALS_ENV)
    if not raw:
        return {}
    value = json.loads(raw)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
