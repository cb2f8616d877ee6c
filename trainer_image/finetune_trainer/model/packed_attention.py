"""Attention per packed sample: the CPU analogue of flash-attention's varlen kernel.

A packed row holds several samples whose position ids restart. SDPA with the block-diagonal mask
transformers derives from those positions computes the whole ``row × row`` score matrix and throws
most of it away (and with an explicit mask neither skips the causal upper half nor uses grouped-query
attention natively). This attention function finds the samples from ``position_ids`` instead and runs
causal SDPA on each one: the same result, with attention FLOPs of ``Σ len²`` instead of ``row²``.

It is registered under :data:`PACKED_SDPA` in transformers' ``AttentionInterface`` with a mask builder
that skips the 4D mask when the only thing it would encode is causality inside packed samples (no
padding mask, no KV cache, no sliding window); any other case gets SDPA's mask, and the function then
is plain SDPA. The loader picks it on CPU when training packs rows (``model.attention: auto``).

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "packed_sdpa"


def supports_packed_sdpa(config: PretrainedConfig) -> bool:
    """Whether ``config``'s model attends causally over the full context (no sliding or chunked windows)."""
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return getattr(config, "sliding_window", None) is None and set(layer_types) == {"full_attention"}


def packed_segments(position_ids: torch.Tensor) -> list[list[int]] | None:
    """Per row, the start of each packed sample and the row's end: ``[[0, s1, …, length], …]``.

    A sample starts wherever the position does not follow the previous one by 1 (the rule
    transformers uses to derive its packed mask). ``None`` when no row holds more than one sample.
    """
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    starts[:, 0] = True
    if not bool(starts[:, 1:].any()):
        return None
    length = position_ids.shape[-1]
    return [[*row.nonzero().flatten().tolist(), length] for row in starts]


def _segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: list[list[int]],
    *,
    groups: int,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """Causal SDPA on each ``[start, end)`` of each row; (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    # unbind/split rather than slicing: their backward assembles each input's gradient once, where
    # every slice's backward would write a full-size zero tensor.
    rows = []
    for b, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0), strict=True)):
        lengths = [end - start for start, end in zip(bounds[b][:-1], bounds[b][1:], strict=True)]
        pieces = [
            F.scaled_dot_product_attention(
                qs, ks, vs, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=groups > 1
            )
            for qs, ks, vs in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), strict=True)
        ]
        rows.append(torch.cat(pieces, dim=1))
    return torch.stack(rows).transpose(1, 2).contiguous()


def packed_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed sample when the mask builder left the mask out, else plain SDPA.

    Returns (batch, seq, heads, dim) like every attention function.
    """
    seq = query.shape[2]
    segmented = (
        attention_mask is None
        and position_ids is not None
        and position_ids.dim() == 2
        and seq > 1
        and seq == key.shape[2] == position_ids.shape[-1]
        and getattr(module, "is_causal", True)
        and kwargs.get("sliding_window") is None
    )
    bounds = packed_segments(position_ids.expand(query.shape[0], -1)) if segmented else None  # type: ignore[union-attr]
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    out = _segment_attention(query, key, value, bounds, groups=groups, scaling=scaling, dropout=dropout)
    return out, None


def packed_sdpa_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    use_vmap: bool = False,
    config: PretrainedConfig | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """No mask when transformers would only derive causality inside packed samples from the positions
    (no 2D mask, no KV cache offset, full attention): the attention function derives it itself.
    Otherwise SDPA's own mask, and the attention function is plain SDPA.

    ``use_vmap`` is set exactly when the model adds its own and/or mask functions (e.g. bidirectional
    image tokens): those need the real mask.
    """
    plain = (
        attention_mask is None
        and not use_vmap
        and q_length == kv_length
        and isinstance(q_offset, int)
        and q_offset == kv_offset == 0
        and (config is None or supports_packed_sdpa(config))
    )
    if plain:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        use_vmap=use_vmap,
        config=config,
        **kwargs,
    )


def register_packed_sdpa() -> str:
    """Register the packed attention and its mask builder (idempotent); returns the ``attn_implementation`` name."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA
