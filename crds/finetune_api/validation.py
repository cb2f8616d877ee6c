"""Semantic validation in one place, for the CLI, the operator and the trainer.

It reports *every* error with its field path, in these passes over one manifest:
1. the models (types, bounds, enums, unknown fields), through pydantic, as strictly as the API server
   reads JSON: camelCase names only (the models' Python names are for code, not manifests), no
   quoted numbers or booleans; an unknown field comes with a "did you mean" hint (``hints``);
2. the CEL rules of the generated CRD schema, evaluated here with cel-python on the manifest with
   the schema's defaults applied — the very rules the API server enforces at apply time;
3. the cross-field rules CEL does not express (:mod:`finetune_api.rules`), on the parsed spec;
4. cross-object checks the API server cannot make (a FineTuneJob's Datasets exist and suit its stage).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .cluster import dataset_cluster_errors, export_cluster_errors, job_cluster_errors
from .crdgen import model_schema
from .dataset import DatasetFormat, DatasetSpec
from .errors import FieldError
from .finetunejob import FineTuneJobSpec, dataset_paths
from .hints import unknown_field_hint, value_hint
from .method import PAIRWISE_STAGES, Stage
from .preflight import preflight_errors
from .resources import KINDS, Dataset, Export, FineTuneJob, kind_of
from .rules import export_rule_errors, job_rule_errors

if TYPE_CHECKING:
    import celpy


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


# Type errors whose input may be the right value in quotes: the message names the string.
_SCALAR_TYPES = ("int_type", "float_type", "bool_type")


def _pydantic_errors(exc: ValidationError, root: type[BaseModel]) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        kind, ctx, loc, value = err["type"], err.get("ctx", {}), err["loc"], err.get("input")
        if kind in ("literal_error", "enum"):
            message = f"must be one of {ctx.get('expected', '')}, got {value!r}"
            hint = value_hint(loc, value)
        elif kind in _PYDANTIC_MESSAGES:
            message = _PYDANTIC_MESSAGES[kind].format(**ctx)
            hint = unknown_field_hint(root, loc) if kind == "extra_forbidden" else ""
        else:
            message, hint = err["msg"], ""
        if kind in _SCALAR_TYPES and isinstance(value, str):
            message += f", got the string {json.dumps(value)}"
        errors.append(FieldError(_path(loc), f"{message}; {hint}" if hint else message))
    return errors


def _as_json(value: Any) -> Any:
    """``value`` as the API server reads it: JSON, where 4.0 is the integer 4 (an integer is a number)."""
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_strictly(model: type[BaseModel], manifest: Mapping[str, Any]) -> BaseModel:
    """``manifest`` parsed as the API server would: wire (camelCase) names only, JSON types, no coercion
    of strings to numbers or booleans. Raises ValidationError.

    Code that builds models from Python names (``FineTuneJobSpec(learning_rate=...)``) and the
    operator's parsing of what the API server stored are unaffected: only manifests go through here.
    """
    text = json.dumps(_as_json(manifest), default=str)  # YAML timestamps and the like become strings
    return model.model_validate_json(text, strict=True, by_alias=True, by_name=False)


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
    parsed: BaseModel | None = None
    try:
        parsed = parse_strictly(info.model, manifest)
    except ValidationError as exc:
        errors += _pydantic_errors(exc, info.model)
    spec = manifest.get("spec")
    if isinstance(spec, dict):
        schema = spec_schema(manifest["kind"])
        old_spec = apply_defaults(schema, old["spec"]) if old and isinstance(old.get("spec"), dict) else None
        for error in cel_errors(schema, apply_defaults(schema, spec), "spec", old_spec):
            if error not in errors:
                errors.append(error)
    if parsed is not None and not errors:  # the cross-field rules read a spec that parses and passes CEL
        errors += rule_errors(parsed)
    return errors


def rule_errors(resource: BaseModel) -> list[FieldError]:
    """The cross-field rules (:mod:`finetune_api.rules`) of a parsed FineTuneJob or Export, then a
    FineTuneJob's memory preflight against the GPU memory it declares; none for other kinds."""
    if isinstance(resource, FineTuneJob):
        return job_rule_errors(resource.spec) or preflight_errors(resource.spec)
    if isinstance(resource, Export):
        return export_rule_errors(resource.spec)
    return []


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
    documents: Sequence[Mapping[str, Any]], *, allow_missing_datasets: bool = False, cluster: bool = False
) -> dict[int, list[FieldError]]:
    """Validate the manifests of one file (or set of files) together: each one alone, then the
    FineTuneJobs' Dataset references against the Datasets among them (a missing one is an error unless
    ``allow_missing_datasets``: the Datasets may already be on the cluster), then with ``cluster`` the
    rules of running in a pod (:mod:`finetune_api.cluster`). Keys: document index."""
    results = {i: validate_manifest(doc) for i, doc in enumerate(documents)}
    datasets: dict[str, DatasetSpec] = {}
    for i, doc in enumerate(documents):
        if doc.get("kind") == "Dataset" and not results[i]:
            ds = Dataset.model_validate(doc)
            datasets[ds.metadata.name] = ds.spec
            if cluster:
                results[i] += dataset_cluster_errors(ds.spec)
    for i, doc in enumerate(documents):
        if results[i] or doc.get("kind") not in ("FineTuneJob", "Export"):
            continue
        if doc["kind"] == "Export":
            results[i] += export_cluster_errors(Export.model_validate(doc).spec) if cluster else []
            continue
        spec = FineTuneJobSpec.model_validate(doc["spec"])
        results[i] += check_dataset_refs(spec, datasets, require=not allow_missing_datasets)
        if cluster:
            results[i] += job_cluster_errors(spec, datasets)
    return results
