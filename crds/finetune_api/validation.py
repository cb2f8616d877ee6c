"""Semantic validation in one place, for the CLI, the operator and the trainer.

It reports *every* error with its field path, in three passes over one manifest:
1. the models (types, bounds, enums, unknown fields), through pydantic;
2. the CEL rules of the generated CRD schema, evaluated here with cel-python on the manifest with
   the schema's defaults applied — the very rules the API server enforces at apply time;
3. cross-object checks the API server cannot make (a FineTuneJob's Datasets exist and suit its stage).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .crdgen import model_schema
from .dataset import DatasetFormat, DatasetSpec
from .finetunejob import FineTuneJobSpec, dataset_paths
from .method import PAIRWISE_STAGES, Stage
from .resources import KINDS, Dataset, kind_of

if TYPE_CHECKING:
    import celpy


@dataclass(frozen=True)
class FieldError:
    """One problem, at one field path (``spec.method.lora.rank``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A manifest that does not validate; carries every error."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


_PYDANTIC_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "string_too_short": "must have at least {min_length} characters",
    "string_too_long": "must have at most {max_length} characters",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "dict_type": "must be an object",
}


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        kind, ctx = err["type"], err.get("ctx", {})
        if kind in ("literal_error", "enum"):
            message = f"must be one of {ctx.get('expected', '')}, got {err.get('input')!r}"
        elif kind in _PYDANTIC_MESSAGES:
            message = _PYDANTIC_MESSAGES[kind].format(**ctx)
        else:
            message = err["msg"]
        errors.append(FieldError(_path(err["loc"]), message))
    return errors


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in, as the API server does before validating."""
    value = copy.deepcopy(value)
    _fill_defaults(schema, value)
    return value


def _fill_defaults(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _fill_defaults(schema["items"], item)


@cache
def _program(rule: str) -> celpy.Runner:
    # Imported on first use: the operator imports this module for the reference checks only, and the
    # CEL interpreter (with its parser) would add ~5 MB to its memory.
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: Mapping[str, Any], value: Any, path: str, old: Any = None) -> list[FieldError]:
    """Evaluate every CEL rule of ``schema`` (recursively) against ``value``.

    Transition rules (those using ``oldSelf``) run only when ``old`` is given, as on an update.
    """
    import celpy

    errors: list[FieldError] = []
    for entry in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in entry["rule"]
        if uses_old and old is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = bool(_program(entry["rule"]).evaluate(activation))
        except celpy.CELEvalError:
            ok = False  # the API server treats an evaluation error as a failed rule too
        if not ok:
            errors.append(FieldError(path + entry.get("fieldPath", ""), entry["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                errors += cel_errors(sub, value[name], f"{path}.{name}", sub_old)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


@cache
def spec_schema(kind: str) -> dict[str, Any]:
    """The structural schema of ``kind``'s spec, as in its CRD."""
    return model_schema(KINDS[kind].spec)


def validate_manifest(manifest: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[FieldError]:
    """Every schema and CEL error of one manifest (``old``: the stored object, for update rules)."""
    try:
        info = kind_of(dict(manifest))
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        return [FieldError(field, message)]
    errors: list[FieldError] = []
    try:
        info.model.model_validate(manifest)
    except ValidationError as exc:
        errors += _pydantic_errors(exc)
    spec = manifest.get("spec")
    if isinstance(spec, dict):
        schema = spec_schema(manifest["kind"])
        old_spec = apply_defaults(schema, old["spec"]) if old and isinstance(old.get("spec"), dict) else None
        for error in cel_errors(schema, apply_defaults(schema, spec), "spec", old_spec):
            if error not in errors:
                errors.append(error)
    return errors


def check_dataset_refs(
    job: FineTuneJobSpec, datasets: Mapping[str, DatasetSpec], *, require: bool = True
) -> list[FieldError]:
    """A FineTuneJob's Datasets exist (among ``datasets``, by name; only when ``require``) and suit its stage."""
    errors = []
    stage = job.method.stage
    for i, ref in enumerate(job.datasets):
        path = f"spec.datasets[{i}].ref"
        ds = datasets.get(ref.ref)
        if ds is None:
            if require:
                errors.append(FieldError(path, f"Dataset {ref.ref!r} not found"))
            continue
        kto = ds.columns is not None and ds.columns.kto_tag is not None
        if stage in PAIRWISE_STAGES and not ds.ranking:
            errors.append(
                FieldError(
                    path, f"stage {stage} needs a ranking Dataset (chosen/rejected); {ref.ref!r} is not"
                )
            )
        if stage == Stage.KTO and not kto:
            errors.append(
                FieldError(path, f"stage kto needs a Dataset with columns.ktoTag; {ref.ref!r} has none")
            )
        if stage not in PAIRWISE_STAGES and ds.ranking:
            errors.append(FieldError(path, f"stage {stage} cannot train on the ranking Dataset {ref.ref!r}"))
        if stage != Stage.PT and ds.format == DatasetFormat.TEXT:
            errors.append(
                FieldError(path, f"stage {stage} needs conversations; {ref.ref!r} is plain text (stage pt)")
            )
    if require:
        training = {ref.ref for ref in job.datasets}
        for path, name in dataset_paths(job):
            if name not in training and name not in datasets:
                errors.append(FieldError(path, f"Dataset {name!r} not found"))
    return errors


def validate_documents(
    documents: Sequence[Mapping[str, Any]], *, require_datasets: bool = False
) -> dict[int, list[FieldError]]:
    """Validate the manifests of one file (or set of files) together: each one alone, then the
    FineTuneJobs' Dataset references against the Datasets among them (a missing one is an error only
    with ``require_datasets``, as for a local run). Keys: document index."""
    results = {i: validate_manifest(doc) for i, doc in enumerate(documents)}
    datasets: dict[str, DatasetSpec] = {}
    for i, doc in enumerate(documents):
        if doc.get("kind") == "Dataset" and not results[i]:
            ds = Dataset.model_validate(doc)
            datasets[ds.metadata.name] = ds.spec
    for i, doc in enumerate(documents):
        if doc.get("kind") == "FineTuneJob" and not results[i]:
            spec = FineTuneJobSpec.model_validate(doc["spec"])
            results[i] += check_dataset_refs(spec, datasets, require=require_datasets)
    return results
