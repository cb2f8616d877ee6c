"""Stage dpo on tiny models: each preference loss widens the chosen − rejected reward margin, ftx mixes in
the SFT loss, LoRA keeps no reference copy, full tuning trains against a frozen one, and data without
pairs is refused by name."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM, TrainingArguments

from finetune_api.finetunejob import FineTuneJobSpec
from finetune_trainer.data import dataset_config, job_processing_config, make_collator, prepare_dataset
from finetune_trainer.model import load_model_and_tokenizer, prepare_model_for_training
from finetune_trainer.run import execute, plan_run
from finetune_trainer.train.preference import run_preference
from finetune_trainer.train.preference_trainer import PreferenceTrainer
from finetune_trainer.train.recipes import RecipeInputs
from finetune_trainer.train.reference import reference_model_for
from finetune_trainer.workspace import open_workspace
from tests.trainer.helpers import same_bits
from tests.trainer.stage_jobs import DATA, PREFERENCE_DATA, early_late, logged, write_stage_job

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")  # tests run beside other servers


LOSSES: dict[str, dict[str, Any]] = {
    "sigmoid": {"loss": "sigmoid", "beta": 0.1},
    "hinge": {"loss": "hinge", "beta": 0.1},
    "ipo": {"loss": "ipo", "beta": 0.1},
    "orpo": {"loss": "orpo", "beta": 0.1},
    "simpo": {"loss": "simpo", "beta": 2.0, "simpoGamma": 0.5},
}


def run_dpo(tmp_path: Path, preference: dict[str, Any], *, finetuning: str = "lora", **training: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    job = write_stage_job(
        tmp_path / "dpo.yaml",
        stage="dpo",
        method={"finetuning": finetuning, "preference": preference},
        dataset=PREFERENCE_DATA,
        out=out,
        training=training,
    )
    outcome = execute(plan_run([str(job)]))
    assert outcome.global_step == 12
    assert (out / "adapter" / "manifest.json").is_file()
    return out


@pytest.mark.parametrize("loss", list(LOSSES))
def test_each_loss_widens_the_reward_margin(loss: str, tmp_path: Path) -> None:
    out = run_dpo(tmp_path, LOSSES[loss])
    early, late = early_late(logged(out, "rewards/margins"))
    assert late > early and late > 0, f"{loss}: margin {early:.4f} → {late:.4f}"
    accuracy = logged(out, "rewards/accuracies")
    assert accuracy[-1] > 0.5, accuracy


def test_ftx_mixes_in_the_sft_loss(tmp_path: Path) -> None:
    plain = run_dpo(tmp_path / "plain", LOSSES["sigmoid"])
    mixed = run_dpo(tmp_path / "ftx", {**LOSSES["sigmoid"], "ftx": 1.0})
    # The same first batch: the mixed loss adds the chosen answers' per-token NLL (several nats here).
    assert logged(mixed, "loss")[0] > logged(plain, "loss")[0] + 1.0
    _, plain_late = early_late(logged(plain, "logps/chosen"))
    _, mixed_late = early_late(logged(mixed, "logps/chosen"))
    assert mixed_late > plain_late, "the SFT term should raise the chosen answers' likelihood"


def test_full_tuning_learns_against_a_frozen_copy(tmp_path: Path) -> None:
    out = run_dpo(tmp_path, LOSSES["sigmoid"], finetuning="full", learningRate=1e-3)
    early, late = early_late(logged(out, "rewards/margins"))
    assert late > early and late > 0


def build_trainer(
    tmp_path: Path, finetuning: str, **preference: Any
) -> tuple[PreferenceTrainer, torch.nn.Module]:
    """A PreferenceTrainer on the tiny model and the example pairs, as the recipe builds it."""
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"source": "tiny://llama"},
            "datasets": [{"ref": "data"}],
            "method": {
                "stage": "dpo",
                "finetuning": finetuning,
                "preference": {**LOSSES["sigmoid"], **preference},
            },
            "training": {"cutoffLen": 128, "gradientCheckpointing": False},
        }
    )
    loaded = load_model_and_tokenizer(
        spec.model, finetuning=spec.method.finetuning, precision=spec.training.precision
    )
    processing = job_processing_config(spec, cache_dir=tmp_path / "data-cache")
    data = prepare_dataset(
        [dataset_config(_preference_dataset(), name="data")],
        processing,
        loaded.tokenizer,
    )
    model = prepare_model_for_training(loaded.model, spec.method)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
        use_cpu=True, report_to=[], remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        preference=spec.method.preference,
        ref_model=reference_model_for(spec, model),
        train_dataset=data.train,
        data_collator=make_collator(processing, loaded.tokenizer),
    )
    return trainer, model


def _preference_dataset() -> Any:
    from finetune_api.dataset import DatasetSpec

    return DatasetSpec.model_validate(PREFERENCE_DATA)


def test_lora_reference_is_the_policy_with_adapters_disabled(tmp_path: Path) -> None:
    gc.collect()
    before = sum(type(o) is LlamaForCausalLM for o in gc.get_objects())
    trainer, _ = build_trainer(tmp_path, "lora")
    trainer.train()
    gc.collect()
    assert trainer.ref_model is None
    after = sum(type(o) is LlamaForCausalLM for o in gc.get_objects())
    assert after - before == 1, "LoRA DPO must keep a single model in memory"
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_full_tuning_reference_is_a_frozen_copy(tmp_path: Path) -> None:
    trainer, policy = build_trainer(tmp_path, "full")
    reference = trainer.ref_model
    assert reference is not None and reference is not policy
    policy_storage = {p.data_ptr() for p in policy.parameters()}
    assert all(p.data_ptr() not in policy_storage and not p.requires_grad for p in reference.parameters())
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    policy_start = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer.train()
    assert all(same_bits(start[name], p) for name, p in reference.named_parameters()), "the reference moved"
    assert any(not same_bits(policy_start[name], p) for name, p in policy.named_parameters()), (
        "the policy did not"
    )


def test_reference_model_source_is_loaded_frozen(tmp_path: Path) -> None:
    trainer, policy = build_trainer(tmp_path, "full", referenceModel="tiny://llama?layers=1")
    reference = trainer.ref_model
    assert isinstance(reference, LlamaForCausalLM) and reference.config.num_hidden_layers == 1
    assert policy.config.num_hidden_layers != 1
    assert not any(p.requires_grad for p in reference.parameters())
    trainer.train()
    assert trainer.state.global_step == 3


def test_data_without_pairs_is_refused_naming_the_field(tmp_path: Path) -> None:
    job = write_stage_job(
        tmp_path / "dpo.yaml",
        stage="dpo",
        method={"finetuning": "lora", "preference": LOSSES["sigmoid"]},
        dataset=PREFERENCE_DATA,
        out=tmp_path / "out",
    )
    plan = plan_run([str(job)])  # the API accepts it: the Dataset says ranking: true ...
    ws = open_workspace("dpo", plan.job.spec, plan.output_uri)
    # ... but the rows the trainer gets are plain sft rows without chosen/rejected.
    sft_rows = dataset_config(
        _preference_dataset().model_copy(update={"source": f"file://{DATA / 'alpaca.jsonl'}"})
    )
    try:
        with pytest.raises(ValueError, match="chosen"):
            run_preference(ws, RecipeInputs(datasets=[sft_rows], evaluation={}, documents=plan.documents))
    finally:
        ws.close(failed="refused")
