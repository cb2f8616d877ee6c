"""Chat templates: a small table of format strings, plus the tokenizer's own (``auto``).

A template turns a conversation (alternating user-side / assistant-side messages, ending on an
answer) into one ``(prompt_text, answer_text)`` pair per turn; the processors tokenise all pairs
of a batch in one call. Format strings use three placeholders, replaced literally (so braces in
the content are harmless): ``{content}``, ``{bos}`` and ``{eos}`` (the tokenizer's tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

Message = dict[str, str]
TOOLS_PREAMBLE = "You have access to the following tools:\n"


class ChatTemplate(Protocol):
    """What the processors need from a template."""

    @property
    def name(self) -> str:
        """The template's name (``auto`` for the tokenizer's own)."""
        ...

    @property
    def efficient_eos(self) -> bool:
        """Whether EOS is appended once at the end instead of closing each answer."""
        ...

    @property
    def stop_words(self) -> tuple[str, ...]:
        """Strings that end an answer when generating."""
        ...

    def render_pairs(self, messages: list[Message], system: str, tools: str) -> list[tuple[str, str]]:
        """``messages`` (even length, ending on an answer) as one (prompt, answer) text pair per turn."""
        ...


@dataclass(frozen=True)
class FormatTemplate:
    """A chat format as prefix/suffix strings per role (LLaMA-Factory's templates, reduced to strings)."""

    name: str
    user: str
    """A user turn, ending with the header that opens the assistant's answer."""
    assistant: str
    """An answer, with the end-of-turn marker the model must learn to emit."""
    system: str = "{content}"
    observation: str = ""
    """A tool result (a user-side turn); empty means formatted like a user turn."""
    function: str = ""
    """A tool call (an answer); empty means formatted like an answer."""
    prefix: str = ""
    """Once at the very start, e.g. ``{bos}``."""
    separator: str = ""
    """Before every turn but the first."""
    default_system: str = ""
    system_in_user: bool = False
    """The format has no system turn: the system text opens the first user message."""
    stop_words: tuple[str, ...] = ()
    efficient_eos: bool = False
    """EOS is not in the answer format: it is appended once at the end and learned at each next prompt."""
    bos: str = ""
    eos: str = ""

    def with_tokens(self, bos: str | None, eos: str | None) -> FormatTemplate:
        """This template bound to a tokenizer's BOS/EOS strings."""
        return replace(self, bos=bos or "", eos=eos or "")

    @cached_property
    def _pieces(self) -> dict[str, tuple[str, ...]]:
        """Each format with ``{bos}``/``{eos}`` filled in once, split around ``{content}``.

        ``content.join(pieces)`` is ``filled.replace("{content}", content)``, without rescanning
        the format for every message.
        """
        formats = (self.user, self.assistant, self.system, self.observation, self.function, self.prefix)
        return {
            fmt: tuple(fmt.replace("{bos}", self.bos).replace("{eos}", self.eos).split("{content}"))
            for fmt in formats
        }

    def _fill(self, fmt: str, content: str = "") -> str:
        return content.join(self._pieces[fmt])

    def render_pairs(self, messages: list[Message], system: str, tools: str) -> list[tuple[str, str]]:
        system = system or self.default_system
        if tools:
            system = f"{system}\n\n{TOOLS_PREAMBLE}{tools}" if system else f"{TOOLS_PREAMBLE}{tools}"
        pairs: list[tuple[str, str]] = []
        for i in range(0, len(messages) - 1, 2):
            question, answer = messages[i], messages[i + 1]
            content = question["content"]
            head = self.separator if i else self._fill(self.prefix)
            if i == 0 and system:
                sys_text = self._fill(self.system, system)
                if self.system_in_user:
                    content = sys_text + content
                else:
                    head += sys_text
            user_fmt = (
                self.observation if question["role"] == "observation" and self.observation else self.user
            )
            answer_fmt = self.function if answer["role"] == "function" and self.function else self.assistant
            pairs.append((head + self._fill(user_fmt, content), self._fill(answer_fmt, answer["content"])))
        return pairs


_CHATML = FormatTemplate(
    name="chatml",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    assistant="{content}<|im_end|>\n",
    observation="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n",
    stop_words=("<|im_end|>",),
)
_LLAMA3_ANSWER_HEAD = "<|start_header_id|>assistant<|end_header_id|>\n\n"

TEMPLATES: dict[str, FormatTemplate] = {
    "llama3": FormatTemplate(
        name="llama3",
        prefix="{bos}",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>" + _LLAMA3_ANSWER_HEAD,
        assistant="{content}<|eot_id|>",
        observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>"
        + _LLAMA3_ANSWER_HEAD,
        stop_words=("<|eot_id|>", "<|eom_id|>"),
    ),
    "chatml": _CHATML,
    "qwen": replace(
        _CHATML,
        name="qwen",
        default_system="You are a helpful assistant.",
        observation="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    ),
    "mistral": FormatTemplate(
        name="mistral",
        prefix="{bos}",
        system="{content}\n\n",
        system_in_user=True,
        user="[INST] {content}[/INST]",
        assistant="{content}{eos}",
        observation="[TOOL_RESULTS] {content}[/TOOL_RESULTS]",
        function="[TOOL_CALLS] {content}{eos}",
    ),
    "gemma": FormatTemplate(
        name="gemma",
        prefix="{bos}",
        system="{content}\n\n",
        system_in_user=True,
        user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
        assistant="{content}<end_of_turn>\n",
        observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
        stop_words=("<end_of_turn>",),
    ),
    "phi": FormatTemplate(
        name="phi",
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n<|assistant|>\n",
        assistant="{content}<|end|>\n",
        stop_words=("<|end|>",),
    ),
    "alpaca": FormatTemplate(
        name="alpaca",
        system="{content}\n\n",
        default_system="Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        user="### Instruction:\n{content}\n\n### Response:\n",
        assistant="{content}{eos}",
        separator="\n\n",
    ),
    "vicuna": FormatTemplate(
        name="vicuna",
        system="{content} ",
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        user="USER: {content} ASSISTANT:",
        assistant="{content}{eos}",
    ),
    "default": FormatTemplate(
        name="default",
        system="System: {content}\n",
        user="Human: {content}\nAssistant: ",
        assistant="{content}{eos}\n",
    ),
    "empty": FormatTemplate(name="empty", user="{content}", assistant="{content}"),
}


_HF_ROLE = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}


class TokenizerTemplate:
    """The tokenizer's own chat template (``template: auto``), split into turns by rendering prefixes.

    Rendering ``messages[:k]`` with a generation prompt and ``messages[:k+1]`` without gives each
    turn's prompt and answer text; templates whose earlier output changes when a turn is added
    (e.g. ones that drop past reasoning) cannot be split this way and are refused.
    """

    name = "auto"
    efficient_eos = False

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "training.template: auto needs a tokenizer with a chat template; name a template instead"
            )
        self._tokenizer = tokenizer
        eos = tokenizer.eos_token
        self.stop_words: tuple[str, ...] = (eos,) if eos else ()

    def _render(self, conv: list[dict[str, Any]], tools: list[Any] | None, generation: bool) -> str:
        text = self._tokenizer.apply_chat_template(
            conv, tools=tools, tokenize=False, add_generation_prompt=generation
        )
        return str(text)

    def render_pairs(self, messages: list[Message], system: str, tools: str) -> list[tuple[str, str]]:
        conv: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        conv += [{"role": _HF_ROLE[m["role"]], "content": m["content"]} for m in messages]
        tool_list = _parse_tools(tools)
        start = len(conv) - len(messages)
        pairs: list[tuple[str, str]] = []
        done = ""
        for i in range(start, len(conv) - 1, 2):
            asked = self._render(conv[: i + 1], tool_list, True)
            answered = self._render(conv[: i + 2], tool_list, False)
            if not (asked.startswith(done) and answered.startswith(asked)):
                raise ValueError(
                    "training.template: the tokenizer's chat template rewrites earlier turns, so turns cannot be "
                    "told apart; name a template (e.g. chatml, llama3) instead of auto"
                )
            pairs.append((asked[len(done) :], answered[len(asked) :]))
            done = answered
        return pairs


def _parse_tools(tools: str) -> list[Any] | None:
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) else [parsed]


def get_template(name: str, tokenizer: Any) -> ChatTemplate:
    """The template called ``name`` (``auto``: the tokenizer's own), bound to ``tokenizer``.

    Raises:
        ValueError: an unknown name, or ``auto`` with a tokenizer that has no chat template.
    """
    if name == "auto":
        return TokenizerTemplate(tokenizer)
    if name not in TEMPLATES:
        raise ValueError(f"training.template: unknown template {name!r}; known: auto, {', '.join(TEMPLATES)}")
    return TEMPLATES[name].with_tokens(tokenizer.bos_token, tokenizer.eos_token)


def stop_token_ids(template: ChatTemplate, tokenizer: Any) -> list[int]:
    """Token ids that end a generated answer: EOS plus the template's single-token stop words."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for word in template.stop_words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids
