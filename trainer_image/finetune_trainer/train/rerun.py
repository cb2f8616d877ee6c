"""Starting a run into an output location that may already hold one: resume it, say it is finished,
refuse a different spec, or discard it (``--overwrite``). Decided before any model is loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import ValidationError

from finetune_api.progress import PROGRESS_KEY
from finetune_api.runidentity import (
    RUN_IDENTITY_KEY,
    RunIdentity,
    SpecDifference,
    conflict_message,
    diff_identities,
)

from ..storage import MANIFEST_NAME, ObjectStore, is_complete
from ..workspace import ADAPTER, CHECKPOINTS, EVAL_RESULTS, LOSS_PLOT, PREDICTIONS, RESOLVED_SPEC, TRAINER_LOG

log = logging.getLogger(__name__)

# What a run writes into its output location, files and folders; run.json goes last (see clear_run).
RUN_FILES = (TRAINER_LOG, LOSS_PLOT, PROGRESS_KEY, RESOLVED_SPEC, EVAL_RESULTS, PREDICTIONS)
RUN_DIRS = (ADAPTER, CHECKPOINTS)


class RunConflict(ValueError):
    """The output location holds a run of a different spec; the message names the fields and the ways out."""


class Start(StrEnum):
    FRESH = "fresh"
    """Nothing to continue (or --overwrite): train from step 0."""
    RESUME = "resume"
    """Continue from the newest complete checkpoint, if there is one."""
    FINISHED = "finished"
    """The same spec already finished here: nothing to do."""


@dataclass(frozen=True)
class RunDecision:
    """How a run starts, and the (compatible) differences accepted with --resume."""

    start: Start
    differences: list[SpecDifference] = field(default_factory=list)


def read_identity(store: ObjectStore) -> RunIdentity | None:
    """The identity stored in the output location; None when there is none (or it is unreadable)."""
    try:
        return RunIdentity.model_validate_json(store.get_bytes(RUN_IDENTITY_KEY))
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        log.warning("ignoring an unreadable %s in %s: %s", RUN_IDENTITY_KEY, store.uri, exc)
        return None


def decide_run(store: ObjectStore, identity: RunIdentity, *, overwrite: bool, resume: bool) -> RunDecision:
    """How a run of ``identity`` starts in ``store``; :class:`RunConflict` when it must not start at all.

    A location without a run record (empty, or written before runs had one) resumes whatever
    complete checkpoint it holds, as a retried pod always has.
    """
    if overwrite:
        return RunDecision(Start.FRESH)
    stored = read_identity(store)
    if stored is None:
        return RunDecision(Start.RESUME)
    differences = diff_identities(stored, identity)
    if not differences:
        finished = is_complete(store.child(ADAPTER))
        return RunDecision(Start.FINISHED if finished else Start.RESUME)
    if resume and all(d.compatible for d in differences):
        return RunDecision(Start.RESUME, differences)
    raise RunConflict(conflict_message(str(store.uri), differences, resume_refused=resume))


def clear_run(store: ObjectStore) -> None:
    """Discard the run in ``store`` (``--overwrite``): the adapter's manifest first, so that a half-
    deleted adapter never looks finished, and the run record last, so that an interrupted clear is
    still refused as a different run instead of being resumed."""
    store.child(ADAPTER).delete(MANIFEST_NAME)
    for folder in RUN_DIRS:
        store.delete_dir(folder)
    for key in RUN_FILES:
        store.delete(key)
    store.delete(RUN_IDENTITY_KEY)


def record_identity(store: ObjectStore, identity: RunIdentity) -> None:
    """Write the run record (rank 0, as the run starts)."""
    store.put_bytes(RUN_IDENTITY_KEY, identity.to_json().encode(), content_type="application/json")


@dataclass(frozen=True)
class AlreadyFinished:
    """What `finetune run` returns for a run that had already finished: where its adapter is."""

    adapter_uri: str


def prepare_output(
    store: ObjectStore, identity: RunIdentity, *, overwrite: bool, resume: bool, main: bool
) -> RunDecision:
    """Decide how the run starts (see :func:`decide_run`); the main process then clears the location
    (``overwrite``) and records the run's identity. Nothing is loaded yet."""
    decision = decide_run(store, identity, overwrite=overwrite, resume=resume)
    if decision.start is Start.FINISHED:
        return decision
    if decision.differences:
        log.warning(
            "--resume: continuing %s with %s", store.uri, "; ".join(str(d) for d in decision.differences)
        )
    if main:
        if overwrite:
            log.info("--overwrite: discarding the run in %s", store.uri)
            clear_run(store)
        record_identity(store, identity)
    return decision
