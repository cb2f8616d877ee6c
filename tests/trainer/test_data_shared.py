"""Prepared datasets shared through the real S3 server: tokenized once, reused by a later job elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_api.finetunejob import TrainingSpec
from finetune_api.method import Stage
from finetune_api.uris import prepared_root
from finetune_trainer.data import DatasetConfig, prepare_dataset, processing_config
from finetune_trainer.storage import S3Settings, open_store
from tests.fixtures.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]


def test_prepared_root_sits_beside_the_output() -> None:
    assert prepared_root("s3://bucket/team/job-a") == "s3://bucket/finetune-prepared"
    assert prepared_root("file:///runs/job-a") == "file:///runs/finetune-prepared"


def test_a_second_job_on_another_machine_reuses_the_prepared_rows(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, data_tokenizer: Any
) -> None:
    settings = S3Settings(s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
    shared = open_store(prepared_root(f"s3://{s3_bucket}/jobs/first"), settings=settings)
    data = [DatasetConfig(source=f"file://{ROOT / 'examples/data/alpaca.jsonl'}", name="alpaca")]
    training = TrainingSpec(cutoff_len=128)

    first = prepare_dataset(
        data,
        processing_config(training, Stage.SFT, cache_dir=tmp_path / "node-a"),
        data_tokenizer,
        shared=shared,
    )
    assert not first.cache_hit and first.fingerprint
    assert shared.exists(f"{first.fingerprint}/manifest.json")

    second = prepare_dataset(
        data,
        processing_config(training, Stage.SFT, cache_dir=tmp_path / "node-b"),
        data_tokenizer,
        shared=shared,
    )
    assert second.shared_hit and second.fingerprint == first.fingerprint
    assert second.train["input_ids"] == first.train["input_ids"]

    other_cutoff = prepare_dataset(
        data,
        processing_config(TrainingSpec(cutoff_len=64), Stage.SFT, cache_dir=tmp_path / "node-c"),
        data_tokenizer,
        shared=shared,
    )
    assert not other_cutoff.shared_hit and other_cutoff.fingerprint != first.fingerprint
