"""`finetune run` with spec.evaluation on a tiny model: a model trained to answer C scores 100% on a
multiple-choice set whose answers are all C, its predictions are "C" (ROUGE-1 100, BLEU-4 of one
matching character), and the scores land in eval_results.json, predictions.jsonl,
trainer_log.jsonl, progress.json (→ status.evaluation) and the Prometheus gauges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.evaluation import EvaluationStatus
from finetune_api.progress import ProgressRecord
from finetune_trainer.run import plan_run, run_from_files
from finetune_trainer.storage import open_store, verify_artifact
from tests.trainer.test_eval_benchmark import synthetic_rows

pytestmark = pytest.mark.slow
API = "finetune.dev/v1alpha1"


@pytest.fixture(autouse=True)
def _no_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file://{path}"


def mc_as_alpaca(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The questions as instruction → answer-letter pairs (the training and predict data)."""
    return [
        {"instruction": f"{r['question']}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}\nAnswer:", "input": "",
         "output": r["answer"]}
        for r in rows
    ]  # fmt: skip


def dataset(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"source": source, **spec},
    }


@pytest.fixture
def job_file(tmp_path: Path, model_cache_dir: Path) -> Path:
    train = synthetic_rows(48, answer="C")
    bench = synthetic_rows(24, answer="C", subjects=("math", "art", "music"))
    spec = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "train"}],
        "method": {"stage": "sft", "finetuning": "lora", "lora": {"rank": 8}},
        "training": {
            "maxSteps": 30, "learningRate": 5e-3, "perDeviceBatchSize": 8, "gradientAccumulationSteps": 1,
            "cutoffLen": 256, "loggingSteps": 5, "saveSteps": 100, "lrScheduler": "constant",
            "gradientCheckpointing": False,
        },
        "evaluation": {
            "predict": {"dataset": "predict", "maxSamples": 6, "batchSize": 4, "generation": {"maxNewTokens": 4}},
            "benchmark": {"dataset": "bench", "nShot": 1, "subjects": ["math", "art"], "batchSize": 8},
        },
    }  # fmt: skip
    docs = [
        {"apiVersion": API, "kind": "FineTuneJob", "metadata": {"name": "evaljob"}, "spec": spec},
        dataset("train", write_jsonl(tmp_path / "train.jsonl", mc_as_alpaca(train)), format="alpaca"),
        dataset("predict", write_jsonl(tmp_path / "predict.jsonl", mc_as_alpaca(bench)), format="alpaca"),
        dataset(
            "bench", write_jsonl(tmp_path / "bench.jsonl", bench), format="text", columns={"text": "question"}
        ),
        dataset(
            "unused",
            write_jsonl(tmp_path / "unused.jsonl", train),
            format="text",
            columns={"text": "question"},
        ),
    ]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_plan_keeps_the_evaluation_datasets_in_the_resolved_documents(job_file: Path) -> None:
    plan = plan_run([str(job_file)], output="file:///tmp/unused")
    names = {d["metadata"]["name"] for d in plan.documents if d["kind"] == "Dataset"}
    assert names == {"train", "predict", "bench"}
    assert [name for name, _, _ in plan.datasets] == ["train"]
    assert sorted(plan.evaluation) == ["bench", "predict"]  # typed, for the evaluator
    bench = plan.evaluation["bench"]
    assert bench.columns is not None and bench.columns.text == "question"


def test_trained_model_scores_and_results_land_everywhere(job_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_from_files([str(job_file)], output=f"file://{out}") == 0

    results = json.loads((out / "eval_results.json").read_text())
    assert results["unit"] == "percent"
    status = EvaluationStatus.model_validate({k: v for k, v in results.items() if k not in ("step", "unit")})
    assert status.benchmark is not None and status.predict is not None
    assert status.benchmark.accuracy == 100.0
    assert status.benchmark.questions == 14  # 8 math + 8 art questions, 1 shot each not scored
    assert {s.subject: s.accuracy for s in status.benchmark.subjects} == {"math": 100.0, "art": 100.0}
    assert status.predict.samples == 6
    assert status.predict.rouge1 == 100.0
    assert status.predict.bleu4 == pytest.approx(100 * 64**-0.25, abs=1e-3)  # "C" vs "C"
    assert status.results == f"file://{out}/eval_results.json"

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6
    assert all(p["label"] == "C" and p["predict"] == "C" and "Answer:" in p["prompt"] for p in predictions)

    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and log[-1]["benchmark_accuracy"] == 100.0
    assert log[-1]["predict_rouge-1"] == 100.0 and log[-1]["benchmark_accuracy/math"] == 100.0

    card = (out / "adapter" / "README.md").read_text()  # rewritten with the scores, its manifest with it
    assert "| predict_rouge-1 | 100 % |" in card and "| benchmark_accuracy | 100 % |" in card
    assert "percentages (0-100)" in card and "are added here once" not in card
    verify_artifact(open_store(f"file://{out}/adapter"), deep=True)

    record = ProgressRecord.model_validate_json((out / "progress.json").read_text())
    assert record.phase == "Succeeded"
    assert record.evaluation == status


def test_untrained_letters_are_not_all_c_so_the_100_percent_is_learned(model_cache_dir: Path) -> None:
    """Guard for the test above: the untrained tiny model does not already prefer C everywhere."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data import get_template
    from finetune_trainer.evaluate import plan_benchmark, read_questions, score_benchmark
    from finetune_trainer.model.tiny import tiny_model_path

    path = tiny_model_path("tiny://llama")
    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    plan = plan_benchmark(
        read_questions(synthetic_rows(24, answer="C", subjects=("math", "art")), field_name="f"), n_shot=1
    )
    scores = score_benchmark(
        model, tokenizer, get_template("auto", tokenizer), plan, language="en", batch_size=8, cutoff_len=256
    )
    assert scores.accuracy < 100.0
