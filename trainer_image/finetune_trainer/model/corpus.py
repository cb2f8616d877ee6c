"""The built-in text the tiny tokenizer is trained on: a fixed paragraph plus seeded generated sentences.

Generated rather than shipped as a large constant so that bigger ``vocab=`` overrides still find
enough distinct merges, while the output stays byte-for-byte reproducible (``random.Random(seed)``
does not depend on the interpreter's hash seed).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

FIXED_TEXT = """\
A language model reads text as a sequence of tokens and learns to predict the next one.
Fine-tuning adapts a pretrained model to a task with a small dataset and a few thousand steps.
LoRA trains two low-rank matrices next to each frozen linear layer; QLoRA does the same on a
model whose weights are stored in four bits. The learning rate warms up, then decays on a cosine.
The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > ; : , . ! ?
def add(a: int, b: int) -> int:
    return a + b
for i in range(10):
    print(i * i)
User: What is the capital of France?
Assistant: The capital of France is Paris.
User: Write a haiku about the sea.
Assistant: Grey waves fold and break / salt wind combs the empty shore / the tide keeps its time.
{"instruction": "Translate to German", "input": "good morning", "output": "guten Morgen"}
"""

# fmt: off
_SUBJECTS = [
    "the model", "a student", "the operator", "my friend", "the teacher", "a robot", "the cluster",
    "the river", "an engineer", "the cat", "the old man", "a small bird", "the scheduler", "our team",
]
_VERBS = [
    "reads", "writes", "trains", "builds", "finds", "moves", "sees", "counts", "learns", "explains",
    "answers", "loads", "saves", "measures", "follows", "repeats", "checks", "sorts",
]
_OBJECTS = [
    "the data", "a long story", "every token", "the weights", "a question", "the answer",
    "three apples", "the checkpoint", "a new song", "the map", "the numbers", "a clear plan",
    "the green door",
]
_ENDINGS = [
    "before noon", "with care", "in the morning", "after the rain", "on the GPU", "for the test",
    "every day", "quickly", "again and again", "without a sound", "at the end of the epoch",
]
_SYLLABLES = [
    "ka", "lo", "mi", "ne", "ru", "ta", "shi", "pon", "der", "vel", "qua", "zor", "bin", "tek", "ar",
    "el", "om", "un", "is", "yo", "fra", "gle", "mp", "st", "th", "ing", "ion", "er",
]
# fmt: on


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def corpus_lines(*, sentences: int = 6000, seed: int = 0) -> Iterator[str]:
    """The tokenizer training corpus, one line at a time, identical on every call with the same args."""
    yield from FIXED_TEXT.splitlines()
    rng = random.Random(seed)
    for i in range(sentences):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ENDINGS)]
        if i % 3 == 0:
            parts.insert(2, _pseudo_word(rng))
        line = " ".join(parts)
        yield f"{line[0].upper()}{line[1:]}. {rng.randint(0, 10_000)} {_pseudo_word(rng)} {_pseudo_word(rng)}."
