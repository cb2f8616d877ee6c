"""The LM head on labelled positions only: the model's own loss and gradients, from fewer logits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM, TrainingArguments

from finetune_trainer.data import IGNORE_INDEX
from finetune_trainer.train.label_head import CausalLMTrainer, keeps_logits_by_mask, labelled_positions

from .helpers import tiny_llama_config

# fp32: the kept rows are the same numbers; only the loss sum's order differs.
TOL = {"atol": 1e-6, "rtol": 1e-5}
CONFIG = tiny_llama_config(vocab_size=96, hidden_size=32, intermediate_size=64, max_position_embeddings=64)


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    base = LlamaForCausalLM._from_config(
        copy.deepcopy(CONFIG), attn_implementation="sdpa", dtype=torch.float32
    )
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def sft_batch() -> dict[str, torch.Tensor]:
    """Two rows; prompts (and a padded tail) unlabelled, as sft batches are."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(1, CONFIG.vocab_size, (2, 24), generator=generator)
    labels = input_ids.clone()
    labels[0, :10] = IGNORE_INDEX
    labels[1, :4] = IGNORE_INDEX
    labels[1, 15:] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


def loss_and_grads(model: torch.nn.Module, **inputs: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_labelled_positions_shift_the_labels() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, 8]])
    kept = labelled_positions(labels)
    assert kept["logits_to_keep"].tolist() == [
        [False, True, True, False, False],
        [True, False, False, True, False],
    ]
    assert kept["shift_labels"].tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_label_only_loss_equals_the_models_loss(num_items_in_batch: int | None) -> None:
    model = lora_model()
    batch = sft_batch()
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    full_loss, full_grads = loss_and_grads(model, **batch, **extra)
    kept = labelled_positions(batch["labels"])
    assert int(kept["logits_to_keep"].sum()) == 25 < batch["input_ids"].numel()
    loss, grads = loss_and_grads(model, **batch, **kept, **extra)
    torch.testing.assert_close(loss, full_loss, **TOL)
    assert full_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in full_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grad, **TOL, msg=name)


def test_a_wrong_target_set_changes_the_loss() -> None:
    """Control: keeping one position fewer gives another loss, so the test above can fail."""
    model = lora_model()
    batch = sft_batch()
    kept = labelled_positions(batch["labels"])
    kept["logits_to_keep"][0, -2] = False
    kept["shift_labels"] = kept["shift_labels"][1:]
    with torch.no_grad():
        assert not torch.allclose(model(**batch, **kept).loss, model(**batch).loss, atol=1e-4)


def test_trainer_loss_and_gradients_match_the_stock_trainer(tmp_path: Path) -> None:
    """Through the Trainer's own compute_loss (num_items_in_batch counted by the Trainer)."""
    batch = sft_batch()
    results = []
    for head_on_labels_only in (False, True):
        model = lora_model()
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        trainer = CausalLMTrainer(model=model, args=args, head_on_labels_only=head_on_labels_only)
        assert trainer.head_on_labels_only is head_on_labels_only
        num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        assert int(num_items) == 25
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (stock_loss, stock_grads), (loss, grads) = results
    torch.testing.assert_close(loss, stock_loss, **TOL)
    for name, grad in stock_grads.items():
        torch.testing.assert_close(grads[name], grad, **TOL, msg=name)
    # Evaluation and prediction keep the full logits.
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert outputs.logits.shape == (2, 24, CONFIG.vocab_size)


def test_models_without_logits_to_keep_keep_the_stock_loss() -> None:
    class NoKeep(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    assert keeps_logits_by_mask(lora_model()) and not keeps_logits_by_mask(NoKeep())
