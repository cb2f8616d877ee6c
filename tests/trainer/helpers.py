"""Assertions shared by the trainer tests: weight hashes and the "only trainable parameters move" invariant."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from transformers import LlamaConfig

LossFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of every tensor in the state dict (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def causal_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token loss of ``input_ids`` on themselves."""
    return model(input_ids=input_ids, labels=input_ids).loss


def random_tokens(model: torch.nn.Module, *, batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    """A fixed batch of random token ids valid for ``model``'s vocabulary."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def train_steps(
    model: torch.nn.Module,
    *,
    steps: int,
    optimizer: torch.optim.Optimizer | None = None,
    input_ids: torch.Tensor | None = None,
    loss_fn: LossFn = causal_lm_loss,
    lr: float = 1e-3,
) -> list[float]:
    """Run ``steps`` optimizer steps on one repeated batch; returns the losses (before each step)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    batch = input_ids if input_ids is not None else random_tokens(model)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality: packed 4-bit weights stored as bf16 contain NaN patterns, which ``==`` never matches."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8))


def assert_only_trainable_parameters_change(
    model: torch.nn.Module,
    *,
    steps: int = 3,
    optimizer: torch.optim.Optimizer | None = None,
    input_ids: torch.Tensor | None = None,
    loss_fn: LossFn = causal_lm_loss,
) -> list[float]:
    """Train a few steps; every parameter with ``requires_grad`` must change and no other may.

    At least two steps are needed for LoRA: B starts at zero, so A gets no gradient in step one.
    Returns the losses.
    """
    assert steps >= 2, "LoRA's A matrices only receive gradients from the second step on"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "the model has no trainable parameters"
    losses = train_steps(model, steps=steps, optimizer=optimizer, input_ids=input_ids, loss_fn=loss_fn)
    after = dict(model.named_parameters())
    unchanged = sorted(n for n in trainable if same_bits(before[n], after[n]))
    moved = sorted(n for n in before.keys() - trainable if not same_bits(before[n], after[n]))
    assert not unchanged, f"trainable parameters did not change: {unchanged}"
    assert not moved, f"frozen parameters changed: {moved}"
    return losses


def trainable_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters with ``requires_grad``."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def tiny_llama_config(**overrides: int) -> LlamaConfig:
    """A 2-layer Llama with grouped-query attention (4 heads, 2 KV heads), pad id 0: the packing tests' model."""
    shape = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
    }
    return LlamaConfig(**{**shape, **overrides})
