"""`finetune export`: the export pod's entry point, and the same thing on a workstation.

The JSON report (a ``finetune_api.reports.ExportReport``) goes to stdout and to the container's
termination message (which the operator reads with the same model and copies into the Export
status); a failure writes its one-line reason there instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from finetune_api.pod import KEEP_WORK_DIR_ENV, LOG_LEVEL_ENV, WORK_DIR_ENV, write_termination_message

from ..storage import IncompleteArtifactError
from .pipeline import pin_mmap_threshold, run_export
from .plan import plan_export

log = logging.getLogger("finetune")
# Expected failures: bad input, refused combinations, storage faults. Anything else is a bug and
# keeps its traceback (its message still reaches the termination log).
EXPECTED_ERRORS = (ValueError, OSError, IncompleteArtifactError, ClientError, BotoCoreError)


def export_from_files(files: Sequence[str]) -> int:
    """The CLI's `export`: 0 once the manifest is written, 1 with a one-line reason otherwise."""
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    pin_mmap_threshold()  # process-wide allocator policy: set by the command, not the library
    root = Path(os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="finetune-export-"))
    try:
        plan = plan_export(files)
        log.info("exporting %s → %s", plan.name, plan.output.uri)
        result = run_export(plan, root)
    except EXPECTED_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        print(f"error: {message}", file=sys.stderr)
        write_termination_message(message)
        return 1
    except BaseException as exc:
        write_termination_message(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if os.environ.get(KEEP_WORK_DIR_ENV) != "1":
            shutil.rmtree(root, ignore_errors=True)
    report = result.report()
    log.info("export complete: %d files, %d bytes at %s; peak RSS %.1f MiB",
             len(report.files), report.size_bytes, report.uri, result.peak_rss_bytes / 2**20)  # fmt: skip
    text = report.to_message()  # the file list goes first (the manifest has it all)
    print(text)
    write_termination_message(text)
    return 0
