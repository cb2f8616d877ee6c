"""The pipeline end to end: mixing, validation split, caching, streaming, stages and their collators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import IterableDataset

from finetune_api.finetunejob import FineTuneJobSpec, MixStrategy
from finetune_api.method import Stage
from finetune_trainer.data import (
    DatasetConfig,
    KtoCollator,
    MalformedDatasetError,
    PairwiseCollator,
    ProcessingConfig,
    job_processing_config,
    make_collator,
    prepare_dataset,
)
from finetune_trainer.data.config import ColumnNames, resolve_num_proc
from finetune_trainer.data.processor import Encoder


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def qa_rows(word: str, n: int) -> list[dict[str, Any]]:
    return [{"instruction": f"{word} question {i}", "output": f"{word} answer {i}"} for i in range(n)]


def processing(cache: Path, **kwargs: Any) -> ProcessingConfig:
    return ProcessingConfig(
        **{"stage": Stage.SFT, "template": "chatml", "cutoff_len": 64, "cache_dir": cache, **kwargs}
    )


def origin_share(tokenizer: Any, ds: Any, word: str) -> tuple[int, int]:
    texts = tokenizer.batch_decode(list(ds["input_ids"]))
    return sum(word in t for t in texts), len(texts)


@pytest.mark.parametrize("strategy", [MixStrategy.INTERLEAVE_UNDER, MixStrategy.INTERLEAVE_OVER])
def test_interleave_respects_weights(
    tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any, strategy: MixStrategy
) -> None:
    alpha = DatasetConfig(source=str(write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 600))), weight=3.0)
    beta = DatasetConfig(source=str(write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 600))), weight=1.0)
    prepared = prepare_dataset(
        [alpha, beta], processing(data_cache_dir, mix_strategy=strategy), data_tokenizer
    )
    from_alpha, total = origin_share(data_tokenizer, prepared.train, "alpha")
    assert 0.70 < from_alpha / total < 0.80
    if strategy is MixStrategy.INTERLEAVE_UNDER:
        assert from_alpha <= 600  # stops when the first dataset runs out
    else:
        assert total - from_alpha >= 600 and from_alpha > 600  # every row of beta seen; alpha over-sampled


def test_concat_keeps_every_row(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    alpha = DatasetConfig(source=str(write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 30))))
    beta = DatasetConfig(source=str(write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 20))))
    prepared = prepare_dataset([alpha, beta], processing(data_cache_dir), data_tokenizer)
    assert origin_share(data_tokenizer, prepared.train, "alpha") == (30, 50)
    assert [s.num_rows for s in prepared.summaries] == [30, 20]


def test_val_size_fraction_and_count(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    data = DatasetConfig(source=str(write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 100))))
    fraction = prepare_dataset([data], processing(data_cache_dir, val_size=0.1), data_tokenizer)
    assert (len(fraction.train), len(fraction.eval or [])) == (90, 10)
    count = prepare_dataset([data], processing(data_cache_dir, val_size=7), data_tokenizer)
    assert (len(count.train), len(count.eval or [])) == (93, 7)
    with pytest.raises(ValueError, match="valSize"):
        prepare_dataset([data], processing(data_cache_dir, val_size=100), data_tokenizer)


def test_second_run_is_a_cache_hit_without_tokenising(
    tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = Encoder.__call__
    monkeypatch.setattr(Encoder, "__call__", lambda self, batch: calls.append(1) or original(self, batch))
    path = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 40))
    data = DatasetConfig(source=str(path))
    first = prepare_dataset([data], processing(data_cache_dir), data_tokenizer)
    assert not first.cache_hit and calls
    calls.clear()
    second = prepare_dataset([data], processing(data_cache_dir), data_tokenizer)
    assert second.cache_hit and not calls
    assert second.fingerprint == first.fingerprint
    assert list(second.train["input_ids"]) == list(first.train["input_ids"])
    assert second.summaries == first.summaries
    # Anything that changes the result is a miss: other settings, other data.
    assert not prepare_dataset([data], processing(data_cache_dir, cutoff_len=32), data_tokenizer).cache_hit
    write_jsonl(path, qa_rows("alpha", 41))
    assert not prepare_dataset([data], processing(data_cache_dir), data_tokenizer).cache_hit


def test_cache_dir_defaults_to_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "c"))
    assert ProcessingConfig().cache_dir == tmp_path / "c"


def test_num_proc_from_env_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_DATA_NUM_PROC", "4")
    assert resolve_num_proc(None, 100) == 1  # tiny sets stay in-process
    assert resolve_num_proc(None, 1_000_000) == 4
    assert resolve_num_proc(2, 1_000_000) == 2


def test_several_processes_give_the_same_rows(tmp_path: Path, data_tokenizer: Any) -> None:
    data = DatasetConfig(source=str(write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 8000))))
    one = prepare_dataset([data], processing(tmp_path / "one", num_proc=1), data_tokenizer)
    two = prepare_dataset([data], processing(tmp_path / "two", num_proc=2), data_tokenizer)
    assert list(one.train["labels"]) == list(two.train["labels"])


def test_all_malformed_dataset_fails_before_tokenising(
    tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any
) -> None:
    rows = [{"instruction": "q", "output": None}] * 3
    data = DatasetConfig(source=str(write_jsonl(tmp_path / "bad.jsonl", rows)), name="bad")
    with pytest.raises(
        MalformedDatasetError,
        match="dataset 'bad': all 3 rows are malformed; first errors: row 0: field 'output': missing",
    ):
        prepare_dataset([data], processing(data_cache_dir), data_tokenizer)


def test_streaming_pipeline(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    rows = qa_rows("alpha", 50)
    rows[5] = {"instruction": "no answer"}
    data = DatasetConfig(source=str(write_jsonl(tmp_path / "a.jsonl", rows)))
    prepared = prepare_dataset(
        [data], processing(data_cache_dir, streaming=True, packing=True, val_size=5), data_tokenizer
    )
    assert isinstance(prepared.train, IterableDataset) and prepared.fingerprint is None
    train, val = list(prepared.train), list(prepared.eval or [])
    assert sum(r["position_ids"].count(0) for r in train + val) == 49
    assert prepared.summaries[0].errors == ["row 5: field 'output': missing"]


def test_pretraining_chunks_to_cutoff(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"line {i} of a long plain text document" for i in range(40)))
    cfg = processing(data_cache_dir, stage=Stage.PT, cutoff_len=32)
    prepared = prepare_dataset([DatasetConfig(source=str(path), format="text")], cfg, data_tokenizer)
    lengths = [len(r) for r in list(prepared.train["input_ids"])]
    assert all(n == 32 for n in lengths[:-1]) and 0 < lengths[-1] <= 32
    batch = make_collator(cfg, data_tokenizer)([prepared.train[0]])
    assert batch["labels"].tolist() == batch["input_ids"].tolist()


def test_pairwise_and_kto_through_the_pipeline(
    tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any
) -> None:
    pairs = [{"instruction": f"q{i}", "chosen": "good", "rejected": "bad answer"} for i in range(10)]
    data = DatasetConfig(source=str(write_jsonl(tmp_path / "p.jsonl", pairs)), ranking=True)
    cfg = processing(data_cache_dir, stage=Stage.ORPO)
    prepared = prepare_dataset([data], cfg, data_tokenizer)
    collator = make_collator(cfg, data_tokenizer)
    assert isinstance(collator, PairwiseCollator)
    assert collator([prepared.train[0], prepared.train[1]])["input_ids"].shape[0] == 4
    kto = [{"instruction": f"q{i}", "output": f"a{i}", "ok": i % 2 == 0} for i in range(10)]
    data = DatasetConfig(
        source=str(write_jsonl(tmp_path / "k.jsonl", kto)), columns=ColumnNames(kto_tag="ok")
    )
    cfg = processing(data_cache_dir, stage=Stage.KTO)
    batch = make_collator(cfg, data_tokenizer)(list(prepare_dataset([data], cfg, data_tokenizer).train))
    assert isinstance(make_collator(cfg, data_tokenizer), KtoCollator)
    assert batch["kto_tags"].tolist() == [i % 2 == 0 for i in range(10)]
    assert batch["kl_input_ids"].shape[0] == 10


def test_packing_is_refused_for_pairwise_stages(data_cache_dir: Path, data_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"training\.packing"):
        prepare_dataset([], processing(data_cache_dir, stage=Stage.DPO, packing=True), data_tokenizer)


def test_processing_config_from_a_job_spec(data_cache_dir: Path) -> None:
    job = FineTuneJobSpec.model_validate(
        {
            "model": {"source": "tiny://llama"},
            "datasets": [{"ref": "a"}],
            "mixStrategy": "interleave_over",
            "method": {"stage": "sft"},
            "training": {
                "cutoffLen": 512,
                "packing": True,
                "template": "qwen",
                "maskHistory": True,
                "valSize": 0.05,
            },
        }
    )
    cfg = job_processing_config(job, cache_dir=data_cache_dir)
    assert (cfg.stage, cfg.cutoff_len, cfg.packing, cfg.template, cfg.mask_history) == (
        Stage.SFT,
        512,
        True,
        "qwen",
        True,
    )
    assert cfg.mix_strategy is MixStrategy.INTERLEAVE_OVER and cfg.val_size == 0.05
