"""Alignment: every source format into one standard row, with malformed rows reported by number.

The standard row (as LLaMA-Factory's aligner, typed):
  ``_prompt``   list of ``{"role", "content"}`` messages, roles user/assistant/observation/function,
                alternating user-side / assistant-side and ending on the user side;
  ``_response`` ``[]`` (pt, prompt-only), ``[answer]`` (sft, kto) or ``[chosen, rejected]`` (pairwise);
  ``_system``, ``_tools`` strings ("" when absent); ``_kto_tag`` desirable flag (kto only);
  ``_error``    "" for a good row, else ``row N: field 'X': what is wrong`` (N is the 0-based row index).
For plain text (pt) the text is the single user message of ``_prompt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Features, List, Value

from .config import ColumnNames, DatasetConfig, RoleTags, Shape

RAW_COLUMN = "_raw"  # one JSON document per row, when the file's rows do not share a schema
MESSAGE = {"role": Value("string"), "content": Value("string")}
ALIGNED_FEATURES = Features(
    {
        "_prompt": List(MESSAGE),
        "_response": List(MESSAGE),
        "_system": Value("string"),
        "_tools": Value("string"),
        "_kto_tag": Value("bool"),
        "_error": Value("string"),
    }
)
USER_SIDE = ("user", "observation")
ASSISTANT_SIDE = ("assistant", "function")

Message = dict[str, str]


class RowError(Exception):
    """A malformed field in one row."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field, self.problem = field, problem


_ERROR_TEXT = re.compile(r"^row (\d+): field '(.*?)': (.*)$", re.DOTALL)


@dataclass(frozen=True)
class RowProblem:
    """A malformed row, as the Dataset status lists it."""

    row: int
    field: str
    message: str

    @classmethod
    def parse(cls, text: str) -> RowProblem:
        """Read back an ``_error`` text (``row N: field 'X': problem``)."""
        match = _ERROR_TEXT.match(text)
        if match is None:
            return cls(-1, "", text)
        return cls(int(match[1]), match[2], match[3])


@dataclass(frozen=True)
class Aligned:
    """One row in standard form."""

    prompt: list[Message]
    response: list[Message]
    system: str = ""
    tools: str = ""
    kto_tag: bool | None = None


def _text(row: Mapping[str, Any], column: str | None, *, required: bool) -> str:
    value = row.get(column) if column else None
    if value is None:
        if required:
            raise RowError(column or "?", "missing")
        return ""
    if not isinstance(value, str):
        raise RowError(column or "?", f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(column or "?", "is empty")
    return value


def _tools(row: Mapping[str, Any], column: str | None) -> str:
    value = row.get(column) if column else None
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(value, ensure_ascii=False)


def _content(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI content parts: [{"type": "text", "text": "..."}]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise RowError(field, f"expected a string, got {type(value).__name__}")


def _one_answer(row: Mapping[str, Any], column: str | None, tags: RoleTags) -> Message:
    """A chosen/rejected answer: a string, a message object, or a one-message list."""
    value = row.get(column) if column else None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get(tags.content_tag)
    if not isinstance(value, str) or not value.strip():
        raise RowError(column or "?", "expected a non-empty answer (string or message)")
    return {"role": "assistant", "content": value}


def _kto_tag(row: Mapping[str, Any], column: str | None) -> bool:
    value = row.get(column) if column else None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RowError(column or "?", "expected true (desirable) or false (undesirable)")


def _split_answers(
    conv: list[Message], row: Mapping[str, Any], cols: ColumnNames, tags: RoleTags, shape: Shape, field: str
) -> tuple[list[Message], list[Message]]:
    """Split a conversation into prompt and response as the stage needs."""
    ends_on_answer = bool(conv) and conv[-1]["role"] in ASSISTANT_SIDE
    if shape is Shape.PAIRWISE:
        if ends_on_answer:
            raise RowError(
                field, "expected the conversation to end with a user message (answers are in chosen/rejected)"
            )
        return conv, [_one_answer(row, cols.chosen, tags), _one_answer(row, cols.rejected, tags)]
    if shape is Shape.PROMPT:
        return (conv[:-1], conv[-1:]) if ends_on_answer else (conv, [])
    if not ends_on_answer:
        raise RowError(field, "expected the conversation to end with an assistant message")
    return conv[:-1], conv[-1:]


def align_alpaca(row: Mapping[str, Any], cols: ColumnNames, tags: RoleTags, shape: Shape) -> Aligned:
    """instruction/input/output (+ system, history, chosen/rejected, kto tag)."""
    prompt: list[Message] = []
    history = row.get(cols.history) if cols.history else None
    if history:
        if not isinstance(history, list):
            raise RowError(cols.history or "?", "expected a list of [prompt, response] pairs")
        for turn in history:
            if not (
                isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
            ):
                raise RowError(cols.history or "?", "expected a list of [prompt, response] pairs")
            prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    instruction = _text(row, cols.prompt, required=True)
    query = _text(row, cols.query, required=False)
    prompt.append({"role": "user", "content": f"{instruction}\n{query}" if query else instruction})
    if shape is Shape.PAIRWISE:
        response = [_one_answer(row, cols.chosen, tags), _one_answer(row, cols.rejected, tags)]
    else:
        answer = _text(row, cols.response, required=shape is not Shape.PROMPT)
        response = [{"role": "assistant", "content": answer}] if answer else []
    return Aligned(prompt, response, _text(row, cols.system, required=False), _tools(row, cols.tools))


def align_messages(row: Mapping[str, Any], cols: ColumnNames, tags: RoleTags, shape: Shape) -> Aligned:
    """sharegpt (from/value) and openai (role/content) conversations, roles mapped through ``tags``."""
    field = cols.messages or "?"
    messages = row.get(field)
    if not isinstance(messages, list) or not messages:
        raise RowError(field, "expected a list of messages")
    roles = {
        tags.user_tag: "user",
        tags.assistant_tag: "assistant",
        tags.observation_tag: "observation",
        tags.function_tag: "function",
    }
    system = _text(row, cols.system, required=False)
    first = messages[0]
    if isinstance(first, dict) and first.get(tags.role_tag) == tags.system_tag:
        system = _content(first.get(tags.content_tag), f"{field}[0].{tags.content_tag}")
        messages = messages[1:]
    offset = len(row[field]) - len(messages)
    conv: list[Message] = []
    for i, message in enumerate(messages):
        where = f"{field}[{i + offset}]"
        if not isinstance(message, dict):
            raise RowError(where, "expected a message object")
        role = roles.get(message.get(tags.role_tag))  # type: ignore[arg-type]
        if role is None:
            raise RowError(
                f"{where}.{tags.role_tag}",
                f"unknown role {message.get(tags.role_tag)!r} (expected one of {sorted(roles)})",
            )
        side = USER_SIDE if i % 2 == 0 else ASSISTANT_SIDE
        if role not in side:
            raise RowError(
                where, f"expected a {'user' if i % 2 == 0 else 'assistant'}-side message, got {role}"
            )
        conv.append(
            {"role": role, "content": _content(message.get(tags.content_tag), f"{where}.{tags.content_tag}")}
        )
    prompt, response = _split_answers(conv, row, cols, tags, shape, field)
    return Aligned(prompt, response, system, _tools(row, cols.tools))


def align_text(row: Mapping[str, Any], cols: ColumnNames, tags: RoleTags, shape: Shape) -> Aligned:
    """A plain-text document (pt)."""
    return Aligned([{"role": "user", "content": _text(row, cols.prompt, required=True)}], [])


def _as_text(aligned: Aligned) -> Aligned:
    """Any conversation flattened into one document, for pt on chat data."""
    text = "\n\n".join(m["content"] for m in aligned.prompt + aligned.response[:1])
    return Aligned([{"role": "user", "content": text}], [])


Aligner = Callable[[Mapping[str, Any], ColumnNames, RoleTags, Shape], Aligned]
ALIGNERS: dict[str, Aligner] = {
    "alpaca": align_alpaca,
    "sharegpt": align_messages,
    "openai": align_messages,
    "text": align_text,
}


def used_columns(cols: ColumnNames) -> list[str]:
    """The source columns the aligner reads."""
    return sorted({c for c in cols.__dict__.values() if c})


def check_columns(cfg: DatasetConfig, shape: Shape, present: list[str] | None) -> None:
    """Dataset-level mistakes, reported before any row is read.

    Raises:
        ValueError: a stage the data cannot serve, or a mapped column the files do not have.
    """
    cols = cfg.resolved_columns()
    if shape is Shape.PAIRWISE and not (cfg.ranking and cols.chosen and cols.rejected):
        raise ValueError(f"dataset {cfg.label!r}: a pairwise stage needs preference pairs (ranking: true)")
    if shape is Shape.KTO and not cols.kto_tag:
        raise ValueError(
            f"dataset {cfg.label!r}: stage kto needs columns.ktoTag (the desirable/undesirable flag)"
        )
    if present is None or RAW_COLUMN in present:
        return
    required = [cols.messages] if cfg.format in ("sharegpt", "openai") else [cols.prompt]
    if shape is Shape.PAIRWISE:
        required += [cols.chosen, cols.rejected]
    elif shape in (Shape.SUPERVISED, Shape.KTO) and cfg.format == "alpaca":
        required.append(cols.response)
    if shape is Shape.KTO:
        required.append(cols.kto_tag)
    missing = [c for c in required if c and c not in present]
    if missing:
        raise ValueError(f"dataset {cfg.label!r}: column(s) {missing} not found; the data has {present}")


def make_batch_aligner(
    cfg: DatasetConfig, shape: Shape
) -> Callable[[dict[str, list[Any]], list[int]], dict[str, list[Any]]]:
    """A ``datasets.map(batched=True, with_indices=True)`` function producing the standard columns."""
    cols, tags = cfg.resolved_columns(), cfg.resolved_tags()
    align = ALIGNERS[cfg.format]
    wanted = used_columns(cols)

    def align_batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in ALIGNED_FEATURES}
        raw = batch.get(RAW_COLUMN)
        present = [c for c in wanted if c in batch]
        for i, index in enumerate(indices):
            try:
                row = _decode(raw[i]) if raw is not None else {c: batch[c][i] for c in present}
                aligned = align(row, cols, tags, shape)
                if shape is Shape.TEXT and cfg.format != "text":
                    aligned = _as_text(aligned)
                if shape is Shape.KTO:
                    aligned = Aligned(
                        aligned.prompt,
                        aligned.response,
                        aligned.system,
                        aligned.tools,
                        _kto_tag(row, cols.kto_tag),
                    )
                error = ""
            except RowError as exc:
                aligned, error = Aligned([], []), f"row {index}: {exc}"
            out["_prompt"].append(aligned.prompt)
            out["_response"].append(aligned.response)
            out["_system"].append(aligned.system)
            out["_tools"].append(aligned.tools)
            out["_kto_tag"].append(aligned.kto_tag)
            out["_error"].append(error)
        return out

    return align_batch


def _decode(raw: str) -> Mapping[str, Any]:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RowError("<json>", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RowError("<json>", f"expected a JSON object, got {type(row).__name__}")
    return row
