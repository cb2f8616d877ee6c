"""The run identity: which spec a run in an output location was started with (``<output.uri>/run.json``).

The trainer writes it when a run starts and compares it on every later start into the same
location: the same spec resumes (a retry of a pod, a re-run on a workstation), a different one is
refused, naming each field that differs. Fields that legitimately change between attempts of one
cluster job (suspend, image, resources, the Job's lifecycle, the output's own address) are left out.
The operator reads the same record to tell which job an output location belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from .dataset import DatasetSpec
from .finetunejob import FineTuneJobSpec

RUN_IDENTITY_KEY: Final = "run.json"

# Top-level spec fields (camelCase) that do not change what is trained: an operator retry, a
# resumed suspension or a new image of the same job must still resume.
IGNORED_SPEC_FIELDS: Final = frozenset(
    {
        "suspend",
        "image",
        "resources",
        "output",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
        "queueName",
    }
)

# Differences under these paths change the shape or meaning of a checkpoint (the weights trained,
# the adapter's tensors, the optimizer's state, DeepSpeed's layout): such a checkpoint can never be
# resumed, only overwritten.
INCOMPATIBLE_PATHS: Final = (
    "spec.model",
    "spec.method.stage",
    "spec.method.finetuning",
    "spec.method.lora",
    "spec.method.freeze",
    "spec.method.galore",
    "spec.distributed",
    "spec.training.optimizer",
)

_UNSET: Final = "(unset)"


class RunIdentity(BaseModel):
    """What identifies a run: the job's name, its spec (defaults filled, ignored fields left out)
    and the specs of its Datasets by reference name."""

    model_config = ConfigDict(extra="ignore")

    job: str
    """The FineTuneJob's name."""
    spec: dict[str, Any]
    """The spec as on the wire (camelCase), defaults filled, without :data:`IGNORED_SPEC_FIELDS`."""
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each referenced Dataset's spec (camelCase, defaults filled) by name."""

    @classmethod
    def of(cls, name: str, spec: FineTuneJobSpec, datasets: Mapping[str, DatasetSpec]) -> RunIdentity:
        """The identity of job ``name`` with ``spec`` reading ``datasets``."""
        # An explicit block equal to the defaults is the same run as no block at all.
        wire = spec.model_copy(update={"method": spec.method.written_out()}).to_wire()
        kept = {k: v for k, v in wire.items() if k not in IGNORED_SPEC_FIELDS}
        return cls(job=name, spec=kept, datasets={n: d.to_wire() for n, d in datasets.items()})

    def to_json(self) -> str:
        """The record as stored."""
        return self.model_dump_json(indent=2) + "\n"


@dataclass(frozen=True)
class SpecDifference:
    """One field that differs between the stored run and the new one."""

    path: str
    """camelCase field path, e.g. ``spec.training.learningRate``."""
    old: Any
    new: Any

    @property
    def compatible(self) -> bool:
        """Whether the stored checkpoints can still be resumed with this field changed."""
        return not any(self.path == p or self.path.startswith(p + ".") for p in INCOMPATIBLE_PATHS)

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def diff_identities(old: RunIdentity, new: RunIdentity) -> list[SpecDifference]:
    """Every leaf that differs (lists compare whole), in a stable order: the job, its spec, its Datasets."""
    before = dict(_leaves("metadata.name", old.job)) | dict(_leaves("spec", old.spec))
    after = dict(_leaves("metadata.name", new.job)) | dict(_leaves("spec", new.spec))
    for name, spec in old.datasets.items():
        before |= dict(_leaves(f"Dataset/{name}.spec", spec))
    for name, spec in new.datasets.items():
        after |= dict(_leaves(f"Dataset/{name}.spec", spec))
    paths = list(before) + [p for p in after if p not in before]
    return [
        SpecDifference(p, before.get(p, _UNSET), after.get(p, _UNSET))
        for p in paths
        if before.get(p, _UNSET) != after.get(p, _UNSET)
    ]


def conflict_message(
    location: str, differences: list[SpecDifference], *, resume_refused: bool = False
) -> str:
    """Why a run into ``location`` is refused and the ways out; ``resume_refused``: --resume was asked."""
    incompatible = [d for d in differences if not d.compatible]
    lines = [f"{location} already holds a run that was started with a different spec:"]
    lines += [f"  {d}{'' if d.compatible else '  (checkpoints incompatible)'}" for d in differences]
    ways = "--overwrite to discard it and start afresh, or --output URI (on a cluster: spec.output.uri) for another location"
    if incompatible:
        fields = ", ".join(d.path for d in incompatible)
        prefix = "--resume is refused. " if resume_refused else ""
        lines.append(f"{prefix}Its checkpoints can never be resumed with {fields} changed: use {ways}.")
    else:
        lines.append(f"Use --resume to continue its checkpoint with the new settings, {ways}.")
    return "\n".join(lines)


def _leaves(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaves(f"{prefix}.{key}", child)
    else:
        yield prefix, value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
