"""LongLoRA's shift short attention (S²-Attn) as a transformers attention function.

While training, the sequence is cut into groups of a quarter of its length and attention runs
inside each group; half of the heads see the sequence rolled by half a group, so information flows
between neighbouring groups. Causality follows the original positions, also in the group that
wraps around (LongLoRA's causal kernel lets its first tokens see the last ones; this does not). In eval mode (generation, evaluation) it is plain SDPA: the model is
trained for short attention but used with full attention, as in the paper.

It is registered under :data:`SHIFT_SHORT_ATTENTION` in transformers' ``AttentionInterface`` (and
given SDPA's mask builder), so any model whose attention dispatches through that interface (Llama,
Qwen2, Mistral, …) uses it when loaded with ``attn_implementation=SHIFT_SHORT_ATTENTION``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SHIFT_SHORT_ATTENTION = "shift_short_sdpa"
GROUP_SIZE_RATIO = 0.25  # LongLoRA's default: groups of a quarter of the sequence


def _shift_heads(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Roll the second half of the heads (dim 1) by ``shift`` positions along the sequence (dim 2)."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, half:].roll(shift, dims=2)], dim=1)


def _to_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """(batch, heads, seq, dim) → (batch·groups, heads, group, dim)."""
    batch, heads, seq, dim = x.shape
    return x.reshape(batch, heads, seq // group, group, dim).transpose(1, 2).reshape(-1, heads, group, dim)


def _group_mask(mask: torch.Tensor, heads: int, group: int) -> torch.Tensor:
    """The diagonal group blocks of a (batch, 1|heads, q, k) mask, after the same head shift as q/k."""
    batch, _, seq, _ = mask.shape
    mask = mask.expand(batch, heads, seq, seq)
    half = heads // 2
    shifted = mask[:, half:].roll((-(group // 2), -(group // 2)), dims=(2, 3))
    mask = torch.cat([mask[:, :half], shifted], dim=1)
    n = seq // group
    blocks = mask.reshape(batch, heads, n, group, n, group).diagonal(dim1=2, dim2=4)  # (b, h, g, g, n)
    blocks = blocks.permute(0, 4, 1, 2, 3).reshape(batch * n, heads, group, group)
    if blocks.dtype == torch.bool:
        # A padding query may find no allowed key inside its group; SDPA would give NaN for that row,
        # and NaN values poison real rows through zero attention weights. Let it attend freely instead.
        blocks = blocks | ~blocks.any(dim=-1, keepdim=True)
    return blocks


def shift_short_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """S²-Attn in training, SDPA otherwise. Returns (batch, seq, heads, dim) like every attention function.

    Raises:
        ValueError: a training sequence whose length does not split into 4 groups of even size
            (pad batches to a multiple of 8: the collators do).
    """
    batch, heads, seq, dim = query.shape
    if not module.training or seq != key.shape[2] or seq < 8:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    group = int(seq * GROUP_SIZE_RATIO)
    if seq % group or group % 2:
        raise ValueError(f"model.shiftAttention: sequence length {seq} must be a multiple of 8")
    groups = kwargs.get("num_key_value_groups") or getattr(module, "num_key_value_groups", 1)
    # The shift is per query head, so grouped-query K/V are expanded to one per query head first.
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    shift = -(group // 2)
    q, k, v = (_to_groups(_shift_heads(t, shift), group) for t in (query, key, value))
    if attention_mask is None:
        # An explicit causal mask, rolled with the heads: a plain causal kernel over the rolled wrap group
        # {end…, start…} would let the first tokens see the last ones (LongLoRA's future leak).
        attention_mask = torch.ones(seq, seq, dtype=torch.bool, device=query.device).tril()[None, None]
    mask = _group_mask(attention_mask, heads, group)
    kwargs.pop("is_causal", None)
    out, _ = sdpa_attention_forward(_NoGqa(module), q, k, v, mask, is_causal=False, **kwargs)
    # out: (batch·groups, group, heads, dim) → (batch, heads, seq, dim), unshift, → (batch, seq, heads, dim)
    out = (
        out.reshape(batch, seq // group, group, heads, dim)
        .permute(0, 3, 1, 2, 4)
        .reshape(batch, heads, seq, dim)
    )
    return _shift_heads(out, -shift).transpose(1, 2).contiguous(), None


class _NoGqa(torch.nn.Module):
    """A stand-in module for SDPA: K/V heads are already expanded, the rest is the real module's."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.num_key_value_groups = 1
        self.is_causal = True
        self.layer_idx = getattr(module, "layer_idx", None)
        self.training = module.training


def register_shift_short_attention() -> str:
    """Register S²-Attn (idempotent) and return its ``attn_implementation`` name."""
    AttentionInterface.register(SHIFT_SHORT_ATTENTION, shift_short_attention_forward)
    AttentionMaskInterface.register(SHIFT_SHORT_ATTENTION, sdpa_mask)
    return SHIFT_SHORT_ATTENTION
