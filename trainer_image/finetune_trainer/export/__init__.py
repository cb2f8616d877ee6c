"""Export: merge LoRA/DoRA adapters into the base, shard, optionally quantize, and upload.

`finetune export export.yaml` runs :func:`export_from_files`; the steps read top to bottom in
:mod:`.pipeline` (plan → load → merge → shards + upload → self-check → model card → manifest).
"""

from .command import export_from_files
from .pipeline import ExportResult, ExportVerificationError, run_export
from .plan import ExportPlan, parse_size, plan_export

__all__ = [
    "ExportPlan",
    "ExportResult",
    "ExportVerificationError",
    "export_from_files",
    "parse_size",
    "plan_export",
    "run_export",
]
