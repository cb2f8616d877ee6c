"""PPO's models with sharing: ONE base model carries the policy adapter ("default") and, for an rm
adapter, the reward adapter ("reward"); the reference is the base with adapters disabled; the
value head is a small linear layer on the policy's last hidden states.

Batches use one layout throughout: ``[left-padded prompt | right-padded response]``, with an
attention mask and position ids counted from each row's first real token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .ppo_core import last_token_index

log = logging.getLogger(__name__)

POLICY_ADAPTER = "default"
REWARD_ADAPTER = "reward"
REWARD_FIELD = "spec.method.ppo.rewardModel"
# Names PEFT gives the classification head of a sequence-classification adapter.
HEAD_MODULES = ("score", "classifier")


@dataclass
class Rollout:
    """One batch of generated sequences in the shared layout."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor
    """``(batch, response_length)``: 1 on the response tokens kept (up to and including a stop token)."""

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


class ValueHead(torch.nn.Module):
    """The critic: hidden state → scalar value, in fp32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


def policy_forward(
    model: PeftModel, value_head: ValueHead | None, rollout: Rollout, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the response tokens under the active adapter (and the values when given).

    Logits are divided by the sampling ``temperature``: the ratio and the KL then compare the
    distributions the responses were actually sampled from.
    """
    out = model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids,
        output_hidden_states=value_head is not None,
        use_cache=False,
    )
    start, end = rollout.prompt_length - 1, rollout.input_ids.shape[1] - 1
    # The state before each response token predicts it (logits) and values it (critic).
    logits = out.logits[:, start:end].float() / temperature
    logprobs = torch.gather(logits.log_softmax(-1), 2, rollout.response_ids.unsqueeze(-1)).squeeze(-1)
    values = value_head(out.hidden_states[-1][:, start:end]) if value_head is not None else None
    return logprobs, values


class RewardScorer(Protocol):
    """Scores each rollout sequence (one float per row)."""

    def __call__(self, rollout: Rollout) -> torch.Tensor: ...


class AdapterReward:
    """An rm adapter on the shared base: the reward adapter's last hidden state through the rm's score head."""

    def __init__(self, model: PeftModel, head: torch.nn.Linear) -> None:
        self.model = model
        self.head = head

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        self.model.set_adapter(REWARD_ADAPTER, inference_mode=True)
        try:
            out = self.model(
                input_ids=rollout.input_ids,
                attention_mask=rollout.attention_mask,
                position_ids=rollout.position_ids,
                output_hidden_states=True,
                use_cache=False,
            )
        finally:
            self.model.set_adapter(POLICY_ADAPTER)  # also makes the policy trainable again, reward frozen
        hidden = out.hidden_states[-1][:, rollout.prompt_length :]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(rollout.response_mask)]
        return self.head(last.float()).squeeze(-1)


class FullReward:
    """A separate sequence-classification reward model with its own tokenizer (texts are re-tokenized)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        policy_tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.policy_tokenizer = policy_tokenizer

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        texts = []
        for ids, mask in zip(rollout.input_ids, rollout.attention_mask, strict=True):
            texts.append(self.policy_tokenizer.decode(ids[mask.bool()], skip_special_tokens=False))
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        )
        device = next(self.model.parameters()).device
        logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
        return logits[:, 0].float().to(rollout.input_ids.device)


def load_full_reward(
    path: str, *, policy_tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype
) -> FullReward:
    """A frozen AutoModelForSequenceClassification (one label) and its tokenizer from ``path``."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{REWARD_FIELD}: a reward model has one output label, this one has {model.config.num_labels}"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last non-pad token
    model.requires_grad_(False).eval()
    return FullReward(model, tokenizer, policy_tokenizer)


def _adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "adapter_model.safetensors").is_file():
        return load_file(str(path / "adapter_model.safetensors"))
    if (path / "adapter_model.bin").is_file():
        return torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise ValueError(
        f"{REWARD_FIELD}: {path} holds no adapter_model.safetensors (is it an rm job's adapter?)"
    )


def split_reward_head(
    weights: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(adapter weights, head weights)``: the classification head (``score``/``classifier``) split off.

    Raises:
        ValueError: no head, or a head that is not one linear layer with one output.
    """
    head: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        module, _, param = key.rpartition(".")
        if module.rsplit(".", 1)[-1] in HEAD_MODULES:
            head[param] = tensor
        else:
            rest[key] = tensor
    if "weight" not in head or head["weight"].ndim != 2 or head["weight"].shape[0] != 1:
        raise ValueError(
            f"{REWARD_FIELD}: the adapter has no one-output score head; use the adapter an rm job saved"
        )
    return rest, head


def attach_reward_adapter(model: PeftModel, path: str) -> AdapterReward:
    """Load an rm job's LoRA adapter as the second adapter of the shared ``model``, and its score head.

    The rm adapter was saved on a sequence-classification model; its LoRA layers sit on the same
    decoder modules as the policy's, so it is attached as a causal-LM adapter without its head,
    and the head is applied to the last hidden state by :class:`AdapterReward`.

    Raises:
        ValueError: not a LoRA adapter, no score head, or shapes that do not fit the base model.
    """
    folder = Path(path)
    config = PeftConfig.from_pretrained(str(folder))
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"{REWARD_FIELD}: rewardModelType lora needs a LoRA adapter, found {config.peft_type}"
        )
    rest, head_weights = split_reward_head(_adapter_weights(folder))
    kept = [m for m in (config.modules_to_save or []) if m not in HEAD_MODULES]
    config = replace(config, task_type=TaskType.CAUSAL_LM, modules_to_save=kept or None, inference_mode=True)
    model.add_adapter(REWARD_ADAPTER, config)
    try:
        result = set_peft_model_state_dict(model, rest, adapter_name=REWARD_ADAPTER)
    except RuntimeError as exc:  # size mismatch: trained on another base model
        raise ValueError(f"{REWARD_FIELD}: the adapter does not fit spec.model.source: {exc}") from exc
    missing = [k for k in result.missing_keys if f".{REWARD_ADAPTER}." in k]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"{REWARD_FIELD}: the adapter does not fit spec.model.source "
            f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})"
        )
    model.set_adapter(POLICY_ADAPTER)
    weight = head_weights["weight"]
    head = torch.nn.Linear(weight.shape[1], 1, bias="bias" in head_weights)
    head.load_state_dict({k: v.float() for k, v in head_weights.items()})
    head.requires_grad_(False)
    log.info("reward adapter %s attached to the shared base model", path)
    return AdapterReward(model, head.to(next(model.parameters()).device))


def save_value_head(head: ValueHead, folder: Path) -> None:
    """The value head next to the policy adapter (``value_head.safetensors``)."""
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
        str(folder / "value_head.safetensors"),
    )


def load_policy_checkpoint(model: PeftModel, head: ValueHead, folder: Path) -> dict[str, object]:
    """Restore the policy adapter and value head from a checkpoint; returns its ``ppo_state.json``."""
    set_peft_model_state_dict(
        model, load_file(str(folder / "adapter_model.safetensors")), adapter_name=POLICY_ADAPTER
    )
    head.load_state_dict(load_file(str(folder / "value_head.safetensors")))
    return json.loads((folder / "ppo_state.json").read_text())
