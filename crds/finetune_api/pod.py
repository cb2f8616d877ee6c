"""The contract between the operator's pods and the trainer that runs in them.

Paths, ports and variable names both sides use, the exit code that means "refused", and the one
writer of the termination message (the report a finished pod hands back, which the kubelet keeps
to 4 KiB). The operator's builders set these; the trainer reads them; neither spells them itself.

What a termination message holds is typed in :mod:`finetune_api.reports`: a Dataset validation
Job's ``DatasetReport``, an export Job's ``ExportReport`` and a training pod's ``ProgressRecord``
(or, from a pod that failed before it had one, a plain line). The trainer renders them within
``TERMINATION_MAX`` with :func:`fit_report` (each model says what gives way) and the operator parses
them with the same models.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

REFUSED_EXIT: Final = 3
"""Exit code of a trainer that refuses to start because the output location holds another run (a
different spec): a retry would refuse again, so the training Job fails at once on it."""

# -- where things are in the pod -------------------------------------------------------------------
CONFIG_DIR: Final = "/etc/finetune"
"""The ConfigMap's mount: the resolved manifests the pod's command reads."""
JOB_FILE: Final = "job.yaml"
DATASET_FILE: Final = "dataset.yaml"
EXPORT_FILE: Final = "export.yaml"
CACHE_DIR: Final = "/var/cache/finetune"
"""The pod's cache volume (models, tokenised data, tiny models)."""
PVC_ROOT: Final = "/mnt/pvc"
"""Where each pvc:// claim is mounted, as ``<PVC_ROOT>/<claim>``."""
METRICS_PORT: Final = 9400
"""The trainer's Prometheus port (also its default outside a pod)."""

# -- environment variables the operator sets and the trainer reads ---------------------------------
CACHE_DIR_ENV: Final = "FINETUNE_CACHE_DIR"
PVC_ROOT_ENV: Final = "FINETUNE_PVC_ROOT"
METRICS_PORT_ENV: Final = "FINETUNE_METRICS_PORT"
S3_CREDENTIALS_DIR_ENV: Final = "FINETUNE_S3_CREDENTIALS_DIR"
"""Folder of the output (or S3 Dataset) Secret's files, for keys beyond the two AWS variables."""
DATASET_CREDENTIALS_ENV: Final = "FINETUNE_DATASET_CREDENTIALS"
"""JSON object: Dataset name → folder where that Dataset's credentialsSecret is mounted."""

# -- knobs of the trainer process the operator leaves unset (local runs, debugging, benchmarks) -----
WORK_DIR_ENV: Final = "FINETUNE_WORK_DIR"
"""The run's scratch folder; unset, a private folder under the temp dir (in a pod: ``/tmp``, an emptyDir)."""
KEEP_WORK_DIR_ENV: Final = "FINETUNE_KEEP_WORK_DIR"
"""``1`` keeps the scratch folder after the run, to look into it."""
LOG_LEVEL_ENV: Final = "FINETUNE_LOG_LEVEL"
"""The trainer's log level (``INFO`` when unset)."""
DATA_NUM_PROC_ENV: Final = "FINETUNE_DATA_NUM_PROC"
"""Worker processes for data preprocessing when the spec sets none (auto when unset)."""

# -- the termination message -----------------------------------------------------------------------
TERMINATION_LOG_ENV: Final = "FINETUNE_TERMINATION_LOG"
"""Where to write the termination message instead (tests, local runs); unset in a pod."""
DEFAULT_TERMINATION_LOG: Final = Path("/dev/termination-log")
TERMINATION_MAX: Final = 4096
"""The kubelet keeps at most this many bytes of a termination message."""


def dataset_credentials_dirs(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The per-Dataset credential folders the operator mounted (empty outside a pod)."""
    raw = (os.environ if env is None else env).get(DATASET_CREDENTIALS_ENV)
    if not raw:
        return {}
    value = json.loads(raw)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def fit_report(
    report: Mapping[str, Any],
    *,
    trim: Sequence[str] = (),
    drop: Sequence[str] = (),
    limit: int = TERMINATION_MAX,
) -> str:
    """``report``'s JSON within ``limit`` bytes: the lists under ``trim`` lose items from their end
    (in that order), then the keys in ``drop`` go (in that order) until it fits."""
    doc = dict(report)

    def fits() -> bool:
        return len(json.dumps(doc).encode()) <= limit

    for key in trim:
        while not fits() and doc.get(key):
            doc[key] = doc[key][:-1]
    for key in drop:
        if fits():
            break
        doc.pop(key, None)
    return json.dumps(doc)


def write_termination_message(text: str, path: Path | None = None) -> None:
    """Write the container's termination message, cut to ``TERMINATION_MAX`` bytes (on a character
    boundary). Outside Kubernetes (the default path absent and no path asked for) nothing is written;
    an unwritable log is skipped, never an error: the report also went to stdout."""
    chosen = path or os.environ.get(TERMINATION_LOG_ENV)  # asked for: written even where nothing was
    target = Path(chosen) if chosen else DEFAULT_TERMINATION_LOG
    if not chosen and not target.exists():
        return
    data = text.encode()[:TERMINATION_MAX].decode(errors="ignore").encode()
    with contextlib.suppress(OSError), target.open("wb") as fh:
        fh.write(data)
