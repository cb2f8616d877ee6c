"""Templates and processors: masking, trainOnPrompt, maskHistory, cutoff with a response share, each stage."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.method import Stage
from finetune_trainer.data import IGNORE_INDEX, ProcessingConfig, get_template
from finetune_trainer.data.processor import Encoder, batch_encode, build_supervised, fit_turn
from finetune_trainer.data.template import TEMPLATES, TokenizerTemplate

CONVERSATION = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
    {"role": "assistant", "content": "second answer"},
]


def batch_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Aligned rows as a columnar batch (what ``datasets.map(batched=True)`` passes)."""
    base = {"_system": "", "_tools": "", "_kto_tag": None, "_error": ""}
    full = [{**base, **row} for row in rows]
    return {
        key: [row[key] for row in full]
        for key in ("_prompt", "_response", "_system", "_tools", "_kto_tag", "_error")
    }


def encode(tokenizer: Any, rows: list[dict[str, Any]], **cfg: Any) -> dict[str, list[Any]]:
    processing = ProcessingConfig(**{"template": "chatml", **cfg})
    return Encoder(tokenizer, get_template(processing.template, tokenizer), processing)(batch_of(rows))


def learned_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])


def test_named_templates_render_their_formats(data_tokenizer: Any) -> None:
    chatml = get_template("chatml", data_tokenizer)
    assert chatml.render_pairs(CONVERSATION[:2], "sys", "") == [
        (
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nfirst question<|im_end|>\n<|im_start|>assistant\n",
            "first answer<|im_end|>\n",
        )
    ]
    llama3 = get_template("llama3", data_tokenizer).render_pairs(CONVERSATION, "", "")
    assert (
        llama3[0][0]
        == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nfirst question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert llama3[1] == (
        "<|start_header_id|>user<|end_header_id|>\n\nsecond question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "second answer<|eot_id|>",
    )
    mistral = get_template("mistral", data_tokenizer).render_pairs(CONVERSATION[:2], "sys", "")
    assert mistral == [("<|begin_of_text|>[INST] sys\n\nfirst question[/INST]", "first answer<|endoftext|>")]
    alpaca = get_template("alpaca", data_tokenizer).render_pairs(CONVERSATION, "", "")
    assert alpaca[0][0].startswith("Below is an instruction") and alpaca[1][0].startswith(
        "\n\n### Instruction:\nsecond"
    )
    assert set(TEMPLATES) == {
        "llama3",
        "chatml",
        "qwen",
        "mistral",
        "gemma",
        "phi",
        "alpaca",
        "vicuna",
        "default",
        "empty",
    }
    with pytest.raises(ValueError, match=r"training\.template"):
        get_template("nope", data_tokenizer)


def test_auto_template_splits_the_tokenizers_own_rendering(data_tokenizer: Any) -> None:
    pairs = TokenizerTemplate(data_tokenizer).render_pairs(CONVERSATION, "sys", "")
    whole = data_tokenizer.apply_chat_template(
        [{"role": "system", "content": "sys"}, *CONVERSATION], tokenize=False
    )
    assert "".join(a + b for a, b in pairs) == whole
    assert [b for _, b in pairs] == ["first answer<|im_end|>\n", "second answer<|im_end|>\n"]


def test_prompt_tokens_are_masked_and_every_answer_learned(data_tokenizer: Any) -> None:
    out = encode(data_tokenizer, [{"_prompt": CONVERSATION[:3], "_response": CONVERSATION[3:]}])
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert data_tokenizer.decode(ids).startswith("<|im_start|>user\nfirst question")
    assert learned_text(data_tokenizer, ids, labels) == "first answer<|im_end|>\nsecond answer<|im_end|>\n"


def test_train_on_prompt_learns_everything(data_tokenizer: Any) -> None:
    out = encode(
        data_tokenizer, [{"_prompt": CONVERSATION[:3], "_response": CONVERSATION[3:]}], train_on_prompt=True
    )
    assert out["labels"][0] == out["input_ids"][0]


def test_mask_history_learns_only_the_last_answer(data_tokenizer: Any) -> None:
    out = encode(
        data_tokenizer, [{"_prompt": CONVERSATION[:3], "_response": CONVERSATION[3:]}], mask_history=True
    )
    assert learned_text(data_tokenizer, out["input_ids"][0], out["labels"][0]) == "second answer<|im_end|>\n"


def test_fit_turn_keeps_the_response_share() -> None:
    assert fit_turn(10, 10, 100, 0.25) == (10, 10)
    assert fit_turn(100, 10, 50, 0.25) == (40, 10)  # short answer kept whole, prompt truncated
    assert fit_turn(10, 100, 50, 0.25) == (10, 40)  # short prompt kept whole
    assert fit_turn(100, 100, 40, 0.25) == (30, 10)  # both long: the answer keeps its quarter


def test_cutoff_truncates_the_prompt_start_and_keeps_the_answer(data_tokenizer: Any) -> None:
    long_prompt = [{"role": "user", "content": "word " * 200}]
    answer = [{"role": "assistant", "content": "the real answer"}]
    out = encode(data_tokenizer, [{"_prompt": long_prompt, "_response": answer}], cutoff_len=40)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert len(ids) == 40
    assert learned_text(data_tokenizer, ids, labels) == "the real answer<|im_end|>\n"
    assert data_tokenizer.decode(ids).endswith("<|im_start|>assistant\nthe real answer<|im_end|>\n")
    long_answer = [{"role": "assistant", "content": "word " * 200}]
    out = encode(
        data_tokenizer,
        [{"_prompt": long_prompt, "_response": long_answer}],
        cutoff_len=40,
        response_reserve_ratio=0.5,
    )
    assert sum(lab != IGNORE_INDEX for lab in out["labels"][0]) == 20


def test_mask_history_keeps_the_last_turn_when_cut(data_tokenizer: Any) -> None:
    pairs = [([1] * 30, [2] * 10), ([3] * 30, [4] * 10)]
    cfg = ProcessingConfig(cutoff_len=40, mask_history=True)
    ids, labels = build_supervised(pairs, cfg)
    assert ids == [3] * 30 + [4] * 10 and labels == [IGNORE_INDEX] * 30 + [4] * 10
    ids, _ = build_supervised(pairs, ProcessingConfig(cutoff_len=40))
    assert ids == [1] * 30 + [2] * 10


def test_efficient_eos_learns_eos_at_the_next_prompt() -> None:
    pairs = [([1, 1], [2]), ([3, 3], [4])]
    ids, labels = build_supervised(pairs, ProcessingConfig(cutoff_len=100), eos_id=9, efficient_eos=True)
    assert ids == [1, 1, 2, 3, 3, 4, 9]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 2, 9, IGNORE_INDEX, 4, 9]


def test_pairwise_shares_the_prompt(data_tokenizer: Any) -> None:
    row = {
        "_prompt": CONVERSATION[:1],
        "_response": [{"role": "assistant", "content": "good"}, {"role": "assistant", "content": "bad"}],
    }
    out = encode(data_tokenizer, [row], stage=Stage.DPO)
    chosen, rejected = out["chosen_input_ids"][0], out["rejected_input_ids"][0]
    assert learned_text(data_tokenizer, chosen, out["chosen_labels"][0]) == "good<|im_end|>\n"
    assert learned_text(data_tokenizer, rejected, out["rejected_labels"][0]) == "bad<|im_end|>\n"
    prompt_len = out["chosen_labels"][0].count(IGNORE_INDEX)
    assert chosen[:prompt_len] == rejected[:prompt_len]


def test_kto_pairs_each_prompt_with_another_answer_for_kl(data_tokenizer: Any) -> None:
    rows = [
        {
            "_prompt": [{"role": "user", "content": f"q{i}"}],
            "_response": [{"role": "assistant", "content": f"a{i}"}],
            "_kto_tag": i == 0,
        }
        for i in range(3)
    ]
    out = encode(data_tokenizer, rows, stage=Stage.KTO)
    assert out["kto_tags"] == [True, False, False]
    assert learned_text(data_tokenizer, out["input_ids"][0], out["labels"][0]) == "a0<|im_end|>\n"
    assert learned_text(data_tokenizer, out["kl_input_ids"][0], out["kl_labels"][0]) == "a1<|im_end|>\n"
    assert data_tokenizer.decode(out["kl_input_ids"][2]).startswith("<|im_start|>user\nq2")
    assert learned_text(data_tokenizer, out["kl_input_ids"][2], out["kl_labels"][2]) == "a0<|im_end|>\n"


def test_prompt_only_for_ppo_and_grpo(data_tokenizer: Any) -> None:
    out = encode(data_tokenizer, [{"_prompt": CONVERSATION[:3], "_response": []}], stage=Stage.GRPO)
    prompt = out["prompt"][0]
    assert prompt.endswith("<|im_start|>user\nsecond question<|im_end|>\n<|im_start|>assistant\n")
    assert data_tokenizer.decode(out["input_ids"][0]) == prompt
    assert out["labels"][0] == []


def test_pretraining_text_ends_with_eos(data_tokenizer: Any) -> None:
    out = encode(
        data_tokenizer,
        [{"_prompt": [{"role": "user", "content": "a document"}], "_response": []}],
        stage=Stage.PT,
    )
    assert data_tokenizer.decode(out["input_ids"][0]) == "a document<|endoftext|>"


def test_rows_with_errors_produce_empty_outputs(data_tokenizer: Any) -> None:
    rows = [
        {"_prompt": [], "_response": [], "_error": "row 0: field 'x': missing"},
        {"_prompt": CONVERSATION[:1], "_response": CONVERSATION[1:2]},
    ]
    out = encode(data_tokenizer, rows)
    assert out["input_ids"][0] == [] and len(out["input_ids"][1]) > 0


def test_batch_encode_matches_the_tokenizer(data_tokenizer: Any) -> None:
    texts = ["hello world", "<|im_start|>user\nhi<|im_end|>"]
    assert batch_encode(data_tokenizer, texts) == data_tokenizer(texts, add_special_tokens=False)["input_ids"]
