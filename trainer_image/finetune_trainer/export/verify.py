"""The export's self-check: logits of the reloaded export against the source model (the base with
its adapter, or the whole fine-tuned model) on fixed inputs.

The rule is ``max |exported - source| <= rtol * max |source|`` over every logit of every probe.
``rtol`` follows what the export does to the weights: one rounding to fp32/fp16/bf16 when merging,
much more for a 8-bit or 4-bit quantization (then the check catches broken weights, not noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from finetune_api.reports import ExportVerification

# Fixed, varied probes: prose, code-ish text, digits, and a chat turn when the tokenizer has a template.
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "1 2 3 4 5 6 7 8 9 10",
)
PROBE_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
RTOL: dict[str, float] = {
    "float32": 1e-4,
    # Half precision rounds every merged weight; the error compounds over the layers.
    "float16": 2e-2,
    "bfloat16": 1e-1,
    # Quantization error on small random models reaches tens of percent of the largest logit;
    # a model whose weights were scrambled or misnamed lands well above 100%.
    "int8": 0.2,
    "int4": 0.6,
}


@dataclass(frozen=True)
class LogitsCheck:
    """Outcome of the comparison, as it goes into the report, the log and the model card."""

    max_abs_diff: float
    reference_max: float
    rtol: float
    top1_agreement: float
    """Share of positions where both models predict the same next token."""
    probes: int
    adapter_effect: float | None = None
    """max |adapter - base| logit: what a merge that lost the adapter would be off by."""

    @property
    def tolerance(self) -> float:
        return self.rtol * self.reference_max

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        """One line for the log and the error message."""
        return (
            f"max |exported - source| logit = {self.max_abs_diff:.3g}, tolerance {self.tolerance:.3g} "
            f"(rtol {self.rtol:g} x max |logit| {self.reference_max:.3g}) over {self.probes} probes; "
            f"top-1 agreement {self.top1_agreement:.1%}"
            + (
                f"; the adapter itself moves logits by up to {self.adapter_effect:.3g}"
                if self.adapter_effect is not None
                else ""
            )
        )

    def to_report(self) -> ExportVerification:
        return ExportVerification(
            passed=self.passed,
            max_abs_diff=round(self.max_abs_diff, 6),
            tolerance=round(self.tolerance, 6),
            rule=f"max|exported-adapter| <= {self.rtol:g} * max|adapter logits|",
            top1_agreement=round(self.top1_agreement, 4),
            adapter_effect=round(self.adapter_effect, 6) if self.adapter_effect is not None else None,
        )


def probe_inputs(tokenizer: PreTrainedTokenizerBase) -> list[torch.Tensor]:
    """Token ids of the fixed probes (one tensor of shape [1, n] each)."""
    texts = list(PROBE_TEXTS)
    if tokenizer.chat_template:
        texts.append(
            tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
        )
    return [tokenizer(text, return_tensors="pt").input_ids for text in texts]


@torch.no_grad()
def probe_logits(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's logits on each probe, as fp32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in inputs]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference between two models' logits over all probes (NaN when any is NaN)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def compare_logits(
    reference: list[torch.Tensor],
    exported: list[torch.Tensor],
    *,
    rtol: float,
    base: list[torch.Tensor] | None = None,
) -> LogitsCheck:
    """Compare the export's logits with the adapter model's; ``base`` (without the adapter) sizes its effect."""
    diff = max_abs_diff(reference, exported)
    top = max(float(r.abs().max()) for r in reference)
    same = sum(int((r.argmax(-1) == e.argmax(-1)).sum()) for r, e in zip(reference, exported, strict=True))
    positions = sum(r.shape[0] * r.shape[1] for r in reference)
    effect = max_abs_diff(reference, base) if base is not None else None
    return LogitsCheck(diff, top, rtol, same / positions, len(reference), effect)


def rtol_for(dtype: torch.dtype, quant_bits: int | None) -> float:
    """The tolerance of an export in ``dtype``, quantized to ``quant_bits`` when given."""
    if quant_bits is not None:
        return RTOL[f"int{quant_bits}"]
    return RTOL[str(dtype).removeprefix("torch.")]
