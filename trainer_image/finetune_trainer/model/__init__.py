"""The trainer's model side: tiny models, loading, tuning types and method-specific optimizers.

Typical use in a recipe::

    loaded = load_model_and_tokenizer(spec.model, finetuning=spec.method.finetuning,
                                      precision=spec.training.precision,
                                      gradient_checkpointing=spec.training.gradient_checkpointing)
    model = prepare_model_for_training(loaded.model, spec.method,
                                       adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized)
    optimizer = build_optimizer(model, spec.method, spec.training)  # None → Trainer's default
"""

from .adapters import count_parameters, find_linear_module_names, prepare_model_for_training
from .loader import (
    LoadedModel,
    ModelHead,
    load_model_and_tokenizer,
    load_tokenizer,
    resize_embeddings_to_tokenizer,
)
from .optim import build_optimizer
from .sources import fetch_source
from .tiny import tiny_model_path

__all__ = [
    "LoadedModel",
    "ModelHead",
    "build_optimizer",
    "count_parameters",
    "fetch_source",
    "find_linear_module_names",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "prepare_model_for_training",
    "resize_embeddings_to_tokenizer",
    "tiny_model_path",
]
