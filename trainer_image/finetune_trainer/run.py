"""`finetune run`: one FineTuneJob, on a workstation or inside the trainer pod (also under torchrun:
`python -m finetune_trainer.run job.yaml`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_api.dataset import DatasetSpec
from finetune_api.manifests import apply_overrides, load_documents
from finetune_api.pod import LOG_LEVEL_ENV, REFUSED_EXIT
from finetune_api.resources import Dataset, FineTuneJob
from finetune_api.runidentity import RunIdentity, SpecDifference
from finetune_api.validation import validate_documents

from .terminate import INTERRUPTED_MESSAGE, Terminated, guarded

log = logging.getLogger("finetune")


@dataclass
class RunPlan:
    """A validated FineTuneJob, its Datasets in reference order, the Datasets its evaluation names, and
    where its outputs go."""

    job: FineTuneJob
    datasets: list[tuple[str, DatasetSpec, float]]
    evaluation: dict[str, DatasetSpec]
    """spec.evaluation's Datasets, by name."""
    output_uri: str
    documents: list[dict[str, Any]]


def plan_run(
    files: Sequence[str],
    *,
    job_name: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
) -> RunPlan:
    """Read, override (``key=value`` on the FineTuneJob's spec), validate and resolve; a ValueError
    lists every problem found."""
    docs = load_documents(files)
    bodies = [d.body for d in docs]
    for body in bodies:
        name = (body.get("metadata") or {}).get("name")
        if overrides and body.get("kind") == "FineTuneJob" and job_name in (None, name):
            apply_overrides(body.setdefault("spec", {}), overrides)
    results = validate_documents(bodies)
    problems = [f"{docs[i].label}: {e}" for i, errors in results.items() for e in errors]
    if problems:
        raise ValueError("invalid manifests:\n  " + "\n  ".join(problems))
    jobs = [FineTuneJob.model_validate(b) for b in bodies if b.get("kind") == "FineTuneJob"]
    if job_name is not None:
        jobs = [j for j in jobs if j.metadata.name == job_name]
    if len(jobs) != 1:
        names = ", ".join(j.metadata.name for j in jobs) or "none"
        raise ValueError(f"expected exactly one FineTuneJob (use --job NAME); found {names}")
    job = jobs[0]
    found = {
        ds.metadata.name: ds
        for ds in (Dataset.model_validate(b) for b in bodies if b.get("kind") == "Dataset")
    }
    datasets = [(ref.ref, found[ref.ref].spec, ref.weight) for ref in job.spec.datasets]
    evaluated = job.spec.evaluation.dataset_refs() if job.spec.evaluation else []
    missing = [name for name in evaluated if name not in found]
    if missing:
        raise ValueError(f"spec.evaluation: Dataset(s) {', '.join(missing)} not found in the given files")
    uri = output or (job.spec.output.uri if job.spec.output else f"file://./runs/{job.metadata.name}")
    used = {"FineTuneJob": {job.metadata.name}, "Dataset": {name for name, _, _ in datasets} | set(evaluated)}
    documents = [b for b in bodies if b.get("metadata", {}).get("name") in used.get(b.get("kind", ""), set())]
    evaluation = {name: found[name].spec for name in evaluated}
    return RunPlan(job, datasets, evaluation, uri, documents)


def execute(plan: RunPlan, *, overwrite: bool = False, resume: bool = False) -> Any:
    """Run the plan's stage; returns the recipe's outcome, or AlreadyFinished. Imports the training stack.

    The output location decides first, before any model is loaded (see ``train.rerun``): the same
    spec resumes or is already finished, a different one raises RunConflict unless ``overwrite``
    (start afresh) or ``resume`` (continue despite differences that keep checkpoints compatible).
    """
    from transformers import set_seed

    from .data import dataset_config
    from .train.recipes import RecipeInputs, recipe_for
    from .train.rerun import AlreadyFinished, Start, prepare_output
    from .workspace import ADAPTER, global_rank, open_workspace, output_store

    recipe = recipe_for(plan.job.spec.method.stage)  # refuses a stage not available yet, before any work
    store = output_store(plan.job.spec, plan.output_uri)
    identity = RunIdentity.of(plan.job.metadata.name, plan.job.spec, {n: s for n, s, _ in plan.datasets})
    decision = prepare_output(store, identity, overwrite=overwrite, resume=resume, main=global_rank() == 0)
    if decision.start is Start.FINISHED:
        return AlreadyFinished(str(store.uri.join(ADAPTER)))
    log.info(
        "running %s (stage %s) → %s",
        plan.job.metadata.name,
        plan.job.spec.method.stage.value,
        plan.output_uri,
    )
    # Seeded before any model is built: adapter and head initialisation come before the Trainer's
    # own seeding, and two runs of one spec must train the same weights.
    set_seed(plan.job.spec.training.seed)
    share = any(spec.prepare for _, spec, _ in plan.datasets)
    ws = open_workspace(
        plan.job.metadata.name,
        plan.job.spec,
        plan.output_uri,
        share_prepared=share,
        resume=decision.start is Start.RESUME,
    )
    ws.learning_rate_scale = learning_rate_scale(decision.differences)
    inputs = RecipeInputs(
        datasets=[dataset_config(spec, name=name, weight=weight) for name, spec, weight in plan.datasets],
        evaluation={name: dataset_config(spec, name=name) for name, spec in plan.evaluation.items()},
        documents=plan.documents,
    )
    try:
        outcome = recipe(ws, inputs)
    except (Terminated, KeyboardInterrupt) as exc:  # going away: no waiting for uploads in flight
        message = f"{str(exc) or INTERRUPTED_MESSAGE}; {resume_hint(ws.reporter)}"
        ws.close(failed=message, wait_for_uploads=False)
        raise type(exc)(message) from None
    except BaseException as exc:
        ws.close(failed=f"{type(exc).__name__}: {exc}")
        raise
    ws.close()
    return outcome


def learning_rate_scale(differences: Sequence[SpecDifference]) -> float:
    """New over old spec.training.learningRate among ``--resume``'s accepted differences; 1 when unchanged."""
    for d in differences:
        if d.path == "spec.training.learningRate" and isinstance(d.old, float) and isinstance(d.new, float):
            return d.new / d.old
    return 1.0


def resume_hint(reporter: Any) -> str:
    """What the next run starts from: the newest complete checkpoint, only when there is one."""
    last = reporter.record.last_checkpoint if reporter is not None else None
    if last:
        return f"the next run resumes from {last}"
    if reporter is None:  # a rank other than 0 does not follow the uploads
        return "the next run resumes from the newest complete checkpoint, if any"
    return "no checkpoint was saved yet: the next run starts from step 0"


def run_from_files(
    files: Sequence[str],
    *,
    job_name: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    resume: bool = False,
) -> int:
    """The CLI's `run`: exit 0 on success (or when the run had finished already), 1 with a clear
    message (no traceback) on bad input, REFUSED_EXIT (3) when another run is in the output location."""
    from .progress import ProgressReporter
    from .train.rerun import AlreadyFinished, RunConflict

    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        plan = plan_run(files, job_name=job_name, output=output, overrides=overrides)
        outcome = execute(plan, overwrite=overwrite, resume=resume)
    except RunConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        # In a pod the termination message carries it to the FineTuneJob's status; the other run's
        # progress.json is left as it is.
        ProgressReporter(show_bar=False).finish("Failed", str(exc))
        return REFUSED_EXIT
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(outcome, AlreadyFinished):
        print(
            f"{plan.job.metadata.name}: already finished in {plan.output_uri} (adapter at "
            f"{outcome.adapter_uri}); nothing to do (--overwrite trains it again)",
            file=sys.stderr,
        )
    elif outcome.adapter_uri:
        loss = f"{outcome.train_loss:.4g}" if outcome.train_loss is not None else "n/a"
        log.info(
            "done: %d steps, train loss %s, adapter at %s", outcome.global_step, loss, outcome.adapter_uri
        )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(lambda: run_from_files(sys.argv[1:])))
