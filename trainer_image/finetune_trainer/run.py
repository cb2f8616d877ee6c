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
from finetune_api.resources import Dataset, FineTuneJob
from finetune_api.validation import validate_documents

from .terminate import Terminated, guarded

log = logging.getLogger("finetune")


@dataclass
class RunPlan:
    """A validated FineTuneJob, its Datasets in reference order, and where its outputs go."""

    job: FineTuneJob
    datasets: list[tuple[str, DatasetSpec, float]]
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
    return RunPlan(job, datasets, uri, documents)


def execute(plan: RunPlan) -> Any:
    """Run the plan's stage; returns the recipe's outcome. Imports the training stack."""
    from transformers import set_seed

    from .data import dataset_config
    from .train.recipes import recipe_for
    from .train.workspace import open_workspace

    recipe = recipe_for(plan.job.spec.method.stage)  # refuses a stage not available yet, before any work
    # Seeded before any model is built: adapter and head initialisation come before the Trainer's
    # own seeding, and two runs of one spec must train the same weights.
    set_seed(plan.job.spec.training.seed)
    share = any(spec.prepare for _, spec, _ in plan.datasets)
    ws = open_workspace(plan.job.metadata.name, plan.job.spec, plan.output_uri, share_prepared=share)
    configs = [dataset_config(spec, name=name, weight=weight) for name, spec, weight in plan.datasets]
    try:
        outcome = recipe(ws, configs, plan.documents)
    except Terminated as exc:  # the pod is going away: no waiting for uploads in flight
        ws.close(failed=str(exc), wait_for_uploads=False)
        raise
    except BaseException as exc:
        ws.close(failed=f"{type(exc).__name__}: {exc}")
        raise
    ws.close()
    return outcome


def run_from_files(
    files: Sequence[str],
    *,
    job_name: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
) -> int:
    """The CLI's `run`: exit 0 on success, 1 with a clear message (no traceback) on bad input."""
    logging.basicConfig(
        level=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        plan = plan_run(files, job_name=job_name, output=output, overrides=overrides)
        log.info(
            "running %s (stage %s) → %s",
            plan.job.metadata.name,
            plan.job.spec.method.stage.value,
            plan.output_uri,
        )
        outcome = execute(plan)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if outcome.adapter_uri:
        log.info(
            "done: %d steps, train loss %s, adapter at %s",
            outcome.global_step,
            outcome.train_loss,
            outcome.adapter_uri,
        )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(lambda: run_from_files(sys.argv[1:])))
