"""Alignment: each format into the standard form; malformed rows numbered, skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.dataset import ColumnMapping, DatasetSpec, TagMapping
from finetune_api.method import Stage
from finetune_trainer.data import DatasetConfig, MalformedDatasetError, dataset_config, validate_dataset
from finetune_trainer.data.config import ColumnNames, RoleTags, Shape
from finetune_trainer.data.loader import AlignmentResult, align_rows, load_rows


def align_file(tmp_path: Path, cache: Path, rows: list[Any], shape: Shape, **cfg: Any) -> AlignmentResult:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = DatasetConfig(source=str(path), name="rows", **cfg)
    return align_rows(load_rows(config, cache_dir=cache), config, shape)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_alpaca_with_input_history_and_system(tmp_path: Path, data_cache_dir: Path) -> None:
    rows = [
        {
            "instruction": "Translate",
            "input": "hello",
            "output": "hallo",
            "system": "be brief",
            "history": [["hi", "hey"]],
        },
        {"instruction": "Count", "input": "", "output": "1 2 3", "system": "", "history": []},
    ]
    result = align_file(
        tmp_path,
        data_cache_dir,
        rows,
        Shape.SUPERVISED,
        columns=ColumnNames(system="system", history="history"),
    )
    first, second = list(result.dataset)
    assert first["_prompt"] == [user("hi"), bot("hey"), user("Translate\nhello")]
    assert first["_response"] == [bot("hallo")]
    assert first["_system"] == "be brief"
    assert second["_prompt"] == [user("Count")]
    assert result.num_errors == 0


def test_sharegpt_with_system_tools_observation_and_custom_tags(tmp_path: Path, data_cache_dir: Path) -> None:
    tags = RoleTags(role_tag="speaker", content_tag="text", user_tag="me", assistant_tag="ai")
    rows = [
        {
            "dialog": [
                {"speaker": "system", "text": "sys"},
                {"speaker": "me", "text": "weather?"},
                {"speaker": "function_call", "text": '{"name": "weather"}'},
                {"speaker": "observation", "text": "sunny"},
                {"speaker": "ai", "text": "It is sunny."},
            ],
            "tools": [{"name": "weather"}],
        }
    ]
    cols = ColumnNames(messages="dialog", tools="tools")
    result = align_file(
        tmp_path, data_cache_dir, rows, Shape.SUPERVISED, format="sharegpt", columns=cols, tags=tags
    )
    row = result.dataset[0]
    assert row["_system"] == "sys"
    assert row["_prompt"] == [
        user("weather?"),
        {"role": "function", "content": '{"name": "weather"}'},
        {"role": "observation", "content": "sunny"},
    ]
    assert row["_response"] == [bot("It is sunny.")]
    assert json.loads(row["_tools"]) == [{"name": "weather"}]


def test_openai_messages(tmp_path: Path, data_cache_dir: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        }
    ]
    row = align_file(tmp_path, data_cache_dir, rows, Shape.SUPERVISED, format="openai").dataset[0]
    assert (row["_system"], row["_prompt"], row["_response"]) == ("S", [user("Q")], [bot("A")])


def test_preference_pairs_alpaca_and_sharegpt(tmp_path: Path, data_cache_dir: Path) -> None:
    alpaca = [{"instruction": "pick", "input": "", "chosen": "good", "rejected": "bad"}]
    row = align_file(tmp_path, data_cache_dir, alpaca, Shape.PAIRWISE, ranking=True).dataset[0]
    assert row["_prompt"] == [user("pick")]
    assert row["_response"] == [bot("good"), bot("bad")]
    sharegpt = [
        {
            "conversations": [{"from": "human", "value": "pick"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        }
    ]
    row = align_file(
        tmp_path, data_cache_dir, sharegpt, Shape.PAIRWISE, format="sharegpt", ranking=True
    ).dataset[0]
    assert row["_response"] == [bot("good"), bot("bad")]


def test_pairwise_stage_needs_a_ranking_dataset(tmp_path: Path, data_cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="ranking: true"):
        align_file(tmp_path, data_cache_dir, [{"instruction": "a", "output": "b"}], Shape.PAIRWISE)


def test_kto_tags(tmp_path: Path, data_cache_dir: Path) -> None:
    rows = [
        {"instruction": "q1", "output": "fine", "label": True},
        {"instruction": "q2", "output": "rude", "label": False},
        {"instruction": "q3", "output": "??", "label": "maybe"},
    ]
    result = align_file(tmp_path, data_cache_dir, rows, Shape.KTO, columns=ColumnNames(kto_tag="label"))
    assert [r["_kto_tag"] for r in result.dataset] == [True, False]
    assert result.errors == ["row 2: field 'label': expected true (desirable) or false (undesirable)"]
    with pytest.raises(ValueError, match="ktoTag"):
        align_file(tmp_path, data_cache_dir, rows, Shape.KTO)


def test_text_format_and_chat_data_flattened_for_pt(tmp_path: Path, data_cache_dir: Path) -> None:
    row = align_file(tmp_path, data_cache_dir, [{"text": "a document"}], Shape.TEXT, format="text").dataset[0]
    assert row["_prompt"] == [user("a document")] and row["_response"] == []
    row = align_file(tmp_path, data_cache_dir, [{"instruction": "Q", "output": "A"}], Shape.TEXT).dataset[0]
    assert row["_prompt"] == [user("Q\n\nA")]


def test_prompt_only_stage_accepts_conversations_without_answer(tmp_path: Path, data_cache_dir: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "solve 2+2"}]}]
    row = align_file(tmp_path, data_cache_dir, rows, Shape.PROMPT, format="sharegpt").dataset[0]
    assert row["_prompt"] == [user("solve 2+2")] and row["_response"] == []


def test_malformed_rows_are_numbered_skipped_and_counted(tmp_path: Path, data_cache_dir: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    rows: list[Any] = [good] * 20
    rows[3] = {"conversations": [{"from": "gpt", "value": "answer first"}, {"from": "human", "value": "q"}]}
    rows[7] = {"conversations": [{"from": "human", "value": "q"}]}
    rows[11] = {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}
    rows[17] = {"conversations": {"from": "human"}}
    result = align_file(tmp_path, data_cache_dir, rows, Shape.SUPERVISED, format="sharegpt")
    assert result.num_rows == 16 and result.num_errors == 4
    assert result.errors == [
        "row 3: field 'conversations[0]': expected a user-side message, got assistant",
        "row 7: field 'conversations': expected the conversation to end with an assistant message",
        "row 11: field 'conversations[1].from': unknown role 'robot' (expected one of ['function_call', 'gpt', 'human', 'observation'])",
        "row 17: field 'conversations': expected a list of messages",
    ]


def test_all_malformed_fails_fast_naming_dataset_and_rows(tmp_path: Path, data_cache_dir: Path) -> None:
    rows = [{"instruction": "", "output": "a"}, {"instruction": "q", "output": 3}]
    with pytest.raises(MalformedDatasetError) as info:
        align_file(tmp_path, data_cache_dir, rows, Shape.SUPERVISED)
    message = str(info.value)
    assert "dataset 'rows'" in message
    assert "row 0: field 'instruction': is empty" in message
    assert "row 1: field 'output': expected a string, got int" in message


def test_missing_mapped_column_is_a_dataset_error(tmp_path: Path, data_cache_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"column\(s\) \['question'\] not found"):
        align_file(
            tmp_path,
            data_cache_dir,
            [{"instruction": "q", "output": "a"}],
            Shape.SUPERVISED,
            columns=ColumnNames(prompt="question"),
        )


def test_validate_dataset_from_api_spec(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    rows: list[Any] = [{"q": f"question {i}", "a": "word " * (i + 1)} for i in range(10)]
    rows[4] = {"q": "question 4"}
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = DatasetSpec(source=path.as_uri(), columns=ColumnMapping(prompt="q", response="a"))
    report = validate_dataset(
        spec, name="qa", tokenizer=data_tokenizer, template="chatml", cutoff_len=40, cache_dir=data_cache_dir
    )
    assert report.valid and report.name == "qa"
    assert (report.num_samples, report.num_errors) == (9, 1)
    assert [(e.row, e.field, e.message) for e in report.errors] == [(4, "a", "missing")]
    assert (
        report.preview[0]
        == "<|im_start|>user\nquestion 0<|im_end|>\n<|im_start|>assistant\nword <|im_end|>\n"
    )
    stats = report.token_stats
    assert stats is not None and stats.min < stats.p95 <= stats.max
    assert 0 < (stats.over_cutoff or 0) < 9


def test_validate_dataset_reports_an_unusable_dataset(tmp_path: Path, data_cache_dir: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"conversations": "x"}\n{"conversations": []}\n')
    spec = DatasetSpec(source=path.as_uri(), format="sharegpt", tags=TagMapping(role_tag="from"))
    report = validate_dataset(spec, cache_dir=data_cache_dir)
    assert not report.valid and report.num_errors == 2
    assert [e.row for e in report.errors] == [0, 1]
    assert "all 2 rows are malformed" in report.problem
    missing = validate_dataset(DatasetConfig(source=str(tmp_path / "none.jsonl")), cache_dir=data_cache_dir)
    assert not missing.valid and "does not exist" in missing.problem


def test_api_columns_and_tags_merge_with_format_defaults() -> None:
    spec = DatasetSpec(
        source="file:///d.jsonl",
        format="openai",
        ranking=True,
        columns=ColumnMapping(messages="chat"),
        tags=TagMapping(user_tag="human"),
    )
    cfg = dataset_config(spec, name="d", weight=2.0)
    cols, tags = cfg.resolved_columns(), cfg.resolved_tags()
    assert (cols.messages, cols.chosen, cols.rejected) == ("chat", "chosen", "rejected")
    assert (tags.role_tag, tags.user_tag, tags.assistant_tag) == ("role", "human", "assistant")
    text = dataset_config(
        DatasetSpec(source="file:///t.txt", format="text", columns=ColumnMapping(text="body"))
    )
    assert text.resolved_columns().prompt == "body"
    assert cfg.weight == 2.0 and Stage.SFT.value == "sft"
