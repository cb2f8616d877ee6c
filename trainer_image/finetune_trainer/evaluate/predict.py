"""Generate answers for prompt rows and score them with BLEU-4 / ROUGE (LLaMA-Factory's do_predict)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from finetune_api.evaluation import GenerationSettings

from ..data import ChatTemplate, stop_token_ids
from .choice import left_padded

_PROBE = "zq"  # an answer text that the template wraps, to see what follows an answer


@dataclass(frozen=True)
class Prediction:
    """One line of predictions.jsonl (LLaMA-Factory's generated_predictions.jsonl keys)."""

    prompt: str
    label: str
    predict: str

    def to_dict(self) -> dict[str, str]:
        """The JSON object written for this prediction."""
        return asdict(self)


def answer_stop_ids(template: ChatTemplate, tokenizer: Any) -> list[int]:
    """Tokens that end an answer: the template's stop tokens plus the end-of-turn token it writes after
    an answer (e.g. ChatML's <|im_end|> when the tokenizer's EOS is another token)."""
    ids = stop_token_ids(template, tokenizer)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    answer = template.render_pairs(messages, "", "")[-1][1]
    tail = answer[answer.find(_PROBE) + len(_PROBE) :]
    tail_ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
    added = set(tokenizer.get_added_vocab().values())
    if tail_ids and tail_ids[0] in added and tail_ids[0] not in ids:
        ids.append(tail_ids[0])
    return ids


def generation_config(
    settings: GenerationSettings, *, pad_id: int, stop_ids: Sequence[int]
) -> GenerationConfig:
    """transformers' GenerationConfig of ``evaluation.predict.generation``.

    Sampling knobs are passed only when sampling: transformers warns about (and ignores) them otherwise.
    """
    kwargs: dict[str, Any] = {
        "do_sample": settings.do_sample,
        "num_beams": settings.num_beams,
        "max_new_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": pad_id,
        "use_cache": True,  # training switched it off in the model config
        "eos_token_id": list(stop_ids),
    }
    if settings.do_sample:
        kwargs |= {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    if settings.num_beams > 1:
        kwargs["length_penalty"] = settings.length_penalty
    return GenerationConfig(**kwargs)


@torch.inference_mode()
def generate_predictions(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    *,
    stop_ids: Sequence[int],
    batch_size: int,
) -> list[Prediction]:
    """Answer each row's ``input_ids`` (a prompt) and pair the answer with its reference ``labels``.

    ``rows`` are the prompt-shaped rows of the data worker: ``input_ids`` (prompt), ``labels``
    (reference answer ids) and ``prompt`` (the rendered prompt text).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = generation_config(settings, pad_id=pad, stop_ids=stop_ids)
    device = next(model.parameters()).device
    model.eval()
    out: list[Prediction] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids, mask = left_padded([r["input_ids"] for r in batch], pad)
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        answers = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
        labels = tokenizer.batch_decode([r["labels"] for r in batch], skip_special_tokens=True)
        out += [
            Prediction(r["prompt"], label.strip(), answer.strip())
            for r, label, answer in zip(batch, labels, answers, strict=True)
        ]
    return out
