"""One export, top to bottom: refuse early → load → reference logits → merge → write + upload shards
→ reload and compare → model card / Modelfile → manifest last."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import resource
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from finetune_api.export import ExportedFile
from finetune_api.reports import ExportReport, ExportVerification
from finetune_api.uris import STORAGE_SCHEMES, Scheme, scheme_of

from ..model.loader import cuda_available
from ..storage import ObjectStore, S3Settings, load_s3_settings, open_store
from ..storage.manifest import MANIFEST_NAME
from .card import CardFacts, model_card, modelfile
from .merge import SourceModel, load_model, merge, resolve_source
from .plan import ExportPlan, parse_size, training_spec_of
from .quantize import calibration_texts, check_quantization, quantize_bitsandbytes, quantize_gptq
from .shards import write_model_metadata, write_weight_shards
from .streaming import export_streamed, streaming_plan
from .upload import ExportUploader, UploadResult
from .verify import LogitsCheck, compare_logits, probe_inputs, probe_logits, rtol_for

log = logging.getLogger(__name__)
README, MODELFILE = "README.md", "Modelfile"
TRAINER_LOG, RESOLVED_SPEC = "trainer_log.jsonl", "job.yaml"
MiB = 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


class ExportVerificationError(ValueError):
    """The reloaded export does not reproduce the adapter model's logits."""


@dataclass(frozen=True)
class ExportResult:
    """What the export wrote and how it checked itself."""

    uri: str
    upload: UploadResult
    check: LogitsCheck | None
    peak_rss_bytes: int

    def report(self) -> ExportReport:
        """What the operator copies into the Export status (plus the check and upload counts)."""
        manifest = self.upload.manifest
        return ExportReport(
            uri=self.uri,
            files=[ExportedFile(path=f.path, size=f.size, sha256=f.sha256) for f in manifest.files],
            size_bytes=manifest.total_size,
            manifest=f"{self.uri.rstrip('/')}/{MANIFEST_NAME}",
            verification=self.check.to_report()
            if self.check
            else ExportVerification(passed=True, rule="adapter copied as is"),
            uploaded_files=len(self.upload.uploaded),
            skipped_files=len(self.upload.skipped),
            peak_rss_bytes=self.peak_rss_bytes,
        )


def output_store(plan: ExportPlan) -> ObjectStore:
    """The destination, with the spec's endpoint and region over the mounted secret / environment."""
    out = plan.output
    if scheme_of(out.uri) is not Scheme.S3:
        return open_store(out.uri)
    settings: S3Settings = load_s3_settings(endpoint_url=out.endpoint)
    return open_store(out.uri, settings=replace(settings, region=out.region) if out.region else settings)


def read_run_files(plan: ExportPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """job.yaml and trainer_log.jsonl beside the adapter, for the model card; missing ones are None / []."""
    if plan.run_uri is None or scheme_of(plan.run_uri) not in STORAGE_SCHEMES:
        return None, []
    try:
        store = open_store(plan.run_uri)
        job_yaml = store.get_bytes(RESOLVED_SPEC).decode() if store.exists(RESOLVED_SPEC) else None
        text = store.get_bytes(TRAINER_LOG).decode() if store.exists(TRAINER_LOG) else ""
    except (OSError, ValueError) as exc:  # the card is a courtesy: never fail the export over it
        log.warning("cannot read the run's files beside the adapter: %s", exc)
        return None, []
    return job_yaml, [json.loads(line) for line in text.splitlines() if line.strip()]


def pin_mmap_threshold(nbytes: int = 4 * MiB) -> None:
    """Serve every allocation above ``nbytes`` with its own mmap, returned to the OS when freed.

    glibc otherwise raises the threshold after each large free, so per-layer temporaries of the
    merge land in the heap and stay resident; measured on a 376 MiB bf16 export this saves about
    a third of the memory above the model itself.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a reload does not stack on the old copy."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the allocator keeps its pages
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident set size: Linux's ``VmHWM``, else ``ru_maxrss``.

    ``ru_maxrss`` is not this program's own figure: it survives ``exec``, so a process started by
    a large parent reports at least the parent's RSS at the fork.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def _reload(folder: Path, source: SourceModel, *, quantized: bool) -> Any:
    kwargs: dict[str, Any] = (
        {"device_map": {"": 0 if cuda_available() else "cpu"}} if quantized else {"dtype": source.dtype}
    )
    return source.auto_class.from_pretrained(folder, **kwargs)


def write_merged(source: SourceModel, out: Path, plan: ExportPlan, uploader: ExportUploader | None) -> None:
    """Merge and write the model folder shard by shard (each shard handed to ``uploader``)."""
    hook = uploader.submit if uploader is not None else None
    assert source.model is not None
    model = merge(source)
    source.model = None  # drop the last reference but ours
    write_model_metadata(model, source.tokenizer, out, on_file=hook)
    write_weight_shards(
        model,
        out,
        max_shard_size=parse_size(plan.spec.shard_size),
        weight_format=plan.spec.format,
        on_file=hook,
    )


def export_weights(
    plan: ExportPlan, source: SourceModel, out: Path, work: Path, uploader: ExportUploader
) -> LogitsCheck:
    """Write the merged (and maybe quantized) model into ``out`` and check it against the adapter model."""
    assert source.model is not None
    inputs = probe_inputs(source.tokenizer)
    reference = probe_logits(source.model, inputs)
    base = None
    if isinstance(source.model, PeftModel):
        with source.model.disable_adapter():
            base = probe_logits(source.model, inputs)
    quant = plan.spec.quantization
    if quant is None:
        write_merged(source, out, plan, uploader)
    else:
        staging = work / "merged"
        texts = calibration_texts(plan, quant, work) if quant.method == "gptq" else []
        write_merged(source, staging, plan, None)
        release_memory()
        size = parse_size(plan.spec.shard_size)
        if quant.method == "gptq":
            quantize_gptq(
                staging, out, quant=quant, tokenizer=source.tokenizer, texts=texts, max_shard_size=size
            )
        else:
            quantize_bitsandbytes(staging, out, bits=quant.bits, dtype=source.dtype, max_shard_size=size)
        source.tokenizer.save_pretrained(out)
        shutil.rmtree(staging, ignore_errors=True)
    release_memory()
    reloaded = _reload(out, source, quantized=quant is not None)
    exported = probe_logits(reloaded, inputs)
    del reloaded
    release_memory()
    return compare_logits(
        reference, exported, rtol=rtol_for(source.dtype, quant.bits if quant else None), base=base
    )


def merge_and_check(
    plan: ExportPlan, source: SourceModel, out: Path, work: Path, uploader: ExportUploader
) -> LogitsCheck:
    """The streaming merge where it applies, else the model-based one; the log says which ran and why."""
    stream = streaming_plan(plan, source)
    if not isinstance(stream, str):
        log.info("merge path: streaming (tensor by tensor; the self-check reads one block at a time)")
        return export_streamed(plan, source, stream, out, uploader)
    log.info("merge path: model-based (the whole model in memory), because of %s", stream)
    load_model(source, plan.model.source)
    return export_weights(plan, source, out, work, uploader)


def export_adapter_only(source: SourceModel, out: Path) -> None:
    """merge: false — the adapter's own files, as trained."""
    assert source.adapter_path is not None
    shutil.copytree(
        source.adapter_path, out, ignore=shutil.ignore_patterns(MANIFEST_NAME), dirs_exist_ok=True
    )


def write_extras(plan: ExportPlan, source: SourceModel, out: Path, check: LogitsCheck | None) -> None:
    """README.md (model card) and the Ollama Modelfile, as the spec asks."""
    if plan.spec.model_card:
        job_yaml, records = read_run_files(plan)
        training, datasets = training_spec_of(plan, job_yaml)
        facts = CardFacts(
            plan.name,
            plan.model.source,
            source.method,
            plan.adapter,
            plan.spec,
            training,
            datasets,
            records,
            check,
        )
        (out / README).write_text(model_card(facts), encoding="utf-8")
    if plan.spec.ollama_modelfile:
        tokenizer: PreTrainedTokenizerBase = source.tokenizer
        stops = [tokenizer.eos_token or "", "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else ""]
        text = modelfile(
            chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
            stop_tokens=stops, adapter_only=not plan.spec.merge, base=plan.model.source,
        )  # fmt: skip
        (out / MODELFILE).write_text(text, encoding="utf-8")


def run_export(plan: ExportPlan, work_dir: Path) -> ExportResult:
    """Run ``plan`` using ``work_dir`` for local files; the export is complete once the manifest is written.

    Raises:
        ValueError: a refused combination (naming the spec field) or a failed self-check.
    """
    check_quantization(plan.spec.quantization, cuda=cuda_available())
    rss_before = peak_rss_bytes()
    store = output_store(plan)
    source = resolve_source(plan)
    out = work_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    uploader = ExportUploader(store, out)
    try:
        check: LogitsCheck | None = None
        if not plan.spec.merge and source.adapter_path is not None:
            export_adapter_only(source, out)
        else:
            check = merge_and_check(plan, source, out, work_dir, uploader)
            log.info("self-check: %s", check.describe())
            if check.adapter_effect is not None and check.adapter_effect <= check.tolerance:
                log.warning(
                    "the adapter's effect is within the tolerance: the check cannot tell a lost merge"
                )
            if not check.passed:
                raise ExportVerificationError(
                    f"the exported model does not match the adapter model: {check.describe()}"
                )
        write_extras(plan, source, out, check)
        result = uploader.finish()
    except BaseException:
        uploader.abort()
        raise
    peak = peak_rss_bytes()
    weights = sum(f.size for f in result.manifest.files if f.path.endswith((".safetensors", ".bin")))
    log.info(
        "peak RSS %.1f MiB: %.1f MiB above the %.1f MiB before loading the model; weights written %.1f MiB",
        peak / MiB, (peak - rss_before) / MiB, rss_before / MiB, weights / MiB,
    )  # fmt: skip
    return ExportResult(str(store.uri), result, check, peak)
