"""Stage ppo on tiny models: the shared-model reward equals the rm it came from, reward rises with KL
bounded, a full reward model works and resumes from its checkpoint, and model sharing keeps one base
model in memory."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from finetune_api.finetunejob import ModelSpec
from finetune_api.method import MethodSpec, PpoSpec
from finetune_trainer.model import load_model_and_tokenizer, prepare_model_for_training, tiny_model_path
from finetune_trainer.run import execute, plan_run, run_from_files
from finetune_trainer.train.ppo_models import (
    REWARD_ADAPTER,
    AdapterReward,
    Rollout,
    ValueHead,
    attach_reward_adapter,
)
from tests.trainer.ppo_helpers import build_full_reward_model, build_reward_adapter
from tests.trainer.stage_jobs import DATA, logged, write_stage_job

pytestmark = pytest.mark.slow

PROMPTS = {"source": f"file://{DATA / 'prompts.jsonl'}", "format": "alpaca"}
# lm_head too: a random tiny model's output layer is too small for LoRA on the blocks alone to
# concentrate the policy on the tokens the reward prefers.
ALL_AND_HEAD = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Many tiny matmuls: one thread is ~10x faster than oversubscribed OpenMP on a shared 2-core box."""
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ppo_method(reward_model: Path, *, kind: str = "lora", **ppo: object) -> dict[str, object]:
    return {
        "finetuning": "lora",
        "lora": {"rank": 8, "targetModules": ALL_AND_HEAD},
        "ppo": {
            "rewardModel": f"file://{reward_model}",
            "rewardModelType": kind,
            "generation": {"maxNewTokens": 3},
            **ppo,
        },
    }


def shared_model(source: str, reward_adapter: Path) -> tuple[PeftModel, AdapterReward]:
    spec = ModelSpec(source=source)
    loaded = load_model_and_tokenizer(spec, precision="fp32", gradient_checkpointing=False)
    model = prepare_model_for_training(
        loaded.model, MethodSpec(stage="ppo", ppo=PpoSpec(reward_model="file:///x"))
    )
    assert isinstance(model, PeftModel)
    return model, attach_reward_adapter(model, str(reward_adapter))


def test_shared_reward_equals_the_rm_model_and_leaves_only_the_policy_trainable(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    base = tiny_model_path("tiny://llama")
    rm = build_reward_adapter(base, tmp_path / "rm", perturb=True)
    model, reward = shared_model("tiny://llama", rm)
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 1000, (n,), generator=generator) for n in (6, 9)]
    responses = [torch.randint(5, 1000, (n,), generator=generator) for n in (4, 2)]
    width_p, width_r = 9, 4
    ids = torch.zeros(2, width_p + width_r, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[row, width_p - len(p) : width_p], ids[row, width_p : width_p + len(r)] = p, r
        mask[row, width_p - len(p) : width_p + len(r)] = 1
    scores = reward(Rollout(ids, mask, width_p, mask[:, width_p:]))

    rm_model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm_model = PeftModel.from_pretrained(rm_model, str(rm)).eval()
    with torch.no_grad():
        expected = [
            rm_model(input_ids=torch.cat([p, r])[None]).logits[0, 0].item()
            for p, r in zip(prompts, responses, strict=True)
        ]
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_before
    assert all(f".{REWARD_ADAPTER}." not in n for n in trainable_before)
    assert model.active_adapter == "default"


def test_ppo_raises_the_reward_and_keeps_kl_bounded(tmp_path: Path, model_cache_dir: Path) -> None:
    rm = build_reward_adapter(tiny_model_path("tiny://llama"), tmp_path / "rm")
    out = tmp_path / "out"
    job = write_stage_job(
        tmp_path / "ppo.yaml",
        stage="ppo",
        method=ppo_method(rm),
        dataset=PROMPTS,
        out=out,
        training={"maxSteps": 60, "saveSteps": 30, "learningRate": 1e-3, "gradientAccumulationSteps": 1},
    )
    outcome = execute(plan_run([str(job)]))

    assert outcome.global_step == 60
    rewards, kls = logged(out, "reward"), logged(out, "kl")
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 1.0, f"mean reward did not rise: {rewards}"
    # targetKL is 6 nats (the default); a policy collapsed onto single tokens would sit near
    # 3 * log(vocab) ≈ 20.8 nats from the reference. Seen on CPU: 6.8-8.5 at most over 10 steps.
    worst_kl = max(sum(kls[i : i + 10]) / 10 for i in range(0, 60, 10))
    print(
        f"\nreward: first 10 steps {first:.2f}, last 10 steps {last:.2f}; highest 10-step mean KL {worst_kl:.2f}"
    )
    assert 3 * math.log(1024) > 12.0
    assert worst_kl < 12.0, kls
    final = out / "adapter"
    assert {"adapter_model.safetensors", "value_head.safetensors", "manifest.json"} <= {
        p.name for p in final.iterdir()
    }
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-30", "checkpoint-60"]


def test_full_reward_model_runs_and_resumes_from_its_checkpoint(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    rm = build_full_reward_model(tiny_model_path("tiny://llama"), tmp_path / "rm-full")
    out = tmp_path / "out"
    method = ppo_method(rm, kind="full", scoreNorm=True, whitenRewards=True, bufferSize=2)
    training = {"maxSteps": 4, "saveSteps": 2, "perDeviceBatchSize": 4, "gradientAccumulationSteps": 1}
    first = execute(
        plan_run(
            [
                str(
                    write_stage_job(
                        tmp_path / "ppo.yaml",
                        stage="ppo",
                        method=method,
                        dataset=PROMPTS,
                        out=out,
                        training=training,
                    )
                )
            ]
        )
    )
    assert first.global_step == 4 and first.resumed_from is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    longer = write_stage_job(
        tmp_path / "ppo.yaml",
        stage="ppo",
        method=method,
        dataset=PROMPTS,
        out=out,
        training={**training, "maxSteps": 6},
    )
    second = execute(plan_run([str(longer)]), resume=True)  # more steps: the same run, continued
    assert second.global_step == 6
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-4")
    steps = [r for r in logged(out, "reward")]
    assert len(steps) == 6, "steps 1-4 carried on from the checkpoint, 5 and 6 trained by the resumed run"
    assert all(math.isfinite(v) for v in logged(out, "loss"))


def test_ppo_refuses_full_tuning_by_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    method = {"finetuning": "full", "ppo": {"rewardModel": "file:///nowhere", "rewardModelType": "full"}}
    job = write_stage_job(
        tmp_path / "ppo.yaml", stage="ppo", method=method, dataset=PROMPTS, out=tmp_path / "out"
    )
    assert run_from_files([str(job)]) == 1
    assert "spec.method.finetuning: stage ppo shares one base model" in capsys.readouterr().err


def resident_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct tensor storages (parameters and buffers) the modules hold; shared storage counts once."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def test_model_sharing_holds_one_base_model(tmp_path: Path, model_cache_dir: Path) -> None:
    source = "tiny://llama?layers=4&hidden=256&intermediate=704"
    base_path = tiny_model_path(source)
    rm = build_reward_adapter(base_path, tmp_path / "rm")
    base_bytes = resident_bytes(load_model_and_tokenizer(ModelSpec(source=source), precision="fp32").model)

    model, reward = shared_model(source, rm)
    value_head = ValueHead(model.config.hidden_size)
    shared = resident_bytes(model, reward.head, value_head)
    full_rm = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    separate = resident_bytes(model, full_rm, value_head)

    print(
        f"\nbase {base_bytes / 2**20:.1f} MiB; shared ppo {shared / 2**20:.1f} MiB; policy + separate rm {separate / 2**20:.1f} MiB"
    )
    assert shared < 1.15 * base_bytes, "policy, reference and reward must share the one base model"
    assert separate > 1.8 * base_bytes  # what sharing saves: a second model copy
