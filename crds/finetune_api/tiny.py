"""``tiny://<arch>[?key=int&...]``: the shape of a small random model, named by its URI.

The API owns the URI's grammar and defaults: ``finetune validate`` and the operator refuse a bad
one (:mod:`finetune_api.rules`), the operator's memory preflight reads the shape from it, and the
trainer builds the model (``finetune_trainer.model.tiny``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import parse_qsl, urlsplit

from .uris import Scheme, scheme_of

TinyArch = Literal["llama", "qwen2"]
TINY_ARCHS: tuple[TinyArch, ...] = ("llama", "qwen2")


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model; every field can be overridden in the URI's query string."""

    arch: TinyArch
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 1024
    """Tokenizer size (the corpus grows with it); the embedding is padded up to it should BPE stop short."""
    max_positions: int = 2048
    seed: int = 0

    @property
    def kv_hidden(self) -> int:
        """Width of the key and value projections (grouped-query attention)."""
        return self.hidden * self.kv_heads // self.heads


def parse_tiny_uri(uri: str, *, field: str = "spec.model.source") -> TinySpec:
    """Parse ``tiny://<arch>[?key=int&...]`` into a :class:`TinySpec`.

    Raises:
        ValueError: unknown arch or option, non-integer values, or inconsistent shapes; the
            message names ``field``.
    """
    parts = urlsplit(uri)
    if scheme_of(uri) is not Scheme.TINY or parts.netloc not in TINY_ARCHS or parts.path not in ("", "/"):
        raise ValueError(f"{field}: {uri!r} is not tiny://<arch> with arch one of {', '.join(TINY_ARCHS)}")
    known = {f.name for f in dataclasses.fields(TinySpec)} - {"arch"}
    options: dict[str, int] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ValueError(f"{field}: {uri!r}: the options are not key=value pairs joined by &") from exc
    for key, value in pairs:
        if key not in known:
            raise ValueError(f"{field}: unknown tiny:// option {key!r}; known: {', '.join(sorted(known))}")
        if not value.isdigit() or (int(value) == 0 and key != "seed"):
            raise ValueError(
                f"{field}: tiny:// option {key}={value!r} must be a positive integer (seed may be 0)"
            )
        options[key] = int(value)
    spec = TinySpec(arch=cast(TinyArch, parts.netloc), **options)
    if spec.hidden % spec.heads or spec.heads % spec.kv_heads or (spec.hidden // spec.heads) % 2:
        raise ValueError(
            f"{field}: {uri!r}: hidden must be a multiple of heads with an even head size, "
            "and heads a multiple of kv_heads"
        )
    return spec
