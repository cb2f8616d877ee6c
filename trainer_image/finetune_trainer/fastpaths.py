"""The performance twins: each fast path, the stock path whose result it must equal, and the tests
that pin the two equal.

A fast path is code that exists for speed or memory only: the reference path defines what it
computes, and the fast path must give the same result wherever it runs. Within the stated
tolerance, that means the same tokens, the same logits and gradients, the same merged weights.
Read the reference to learn what the code means; read the fast path to learn how it is made cheap.
Every module holding a fast path says so in its docstring and points here. The unit test
``tests/unit/test_fastpaths.py`` imports both sides of every entry and checks that each named test
exists, so this list cannot go stale silently.

``fast`` and ``reference`` are ``module:qualname`` import paths. ``switch`` says how to get the
reference path instead, and ``tests`` are ``path::function`` ids of the equality tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FastPath:
    """One performance twin: a fast path and the reference path it must equal."""

    name: str
    fast: str
    """``module:qualname`` of the fast path."""
    reference: str
    """``module:qualname`` of the stock path that defines the result."""
    switch: str
    """How to run the reference path instead (or why there is no switch)."""
    tests: tuple[str, ...]
    """``tests/…/test_x.py::test_y``: the tests that hold the two equal."""
    why: str
    """What the fast path saves, in one line."""


FAST_PATHS: tuple[FastPath, ...] = (
    FastPath(
        name="fused LoRA linear",
        fast="finetune_trainer.model.fast_linear:FusedLoraLinear.forward",
        reference="peft.tuners.lora.layer:Linear.forward",
        switch="prepare_model_for_training(..., fast_linear=False); any call it cannot fuse exactly "
        "(DoRA, dropout, autocast, non-fp32, few tokens) already runs PEFT's forward",
        tests=(
            "tests/trainer/test_model_fast_linear.py::test_fused_lora_matches_peft",
            "tests/trainer/test_model_fast_linear.py::test_base_weight_and_bias_gradients_when_they_train",
            "tests/trainer/test_model_fast_linear.py::test_peft_path_where_fusing_is_not_exact",
            "tests/trainer/test_model_fast_linear.py::test_peft_path_for_few_tokens_disabled_adapters_and_autocast",
            "tests/trainer/test_model_fast_linear.py::test_lora_run_trains_and_saves_a_plain_peft_adapter",
        ),
        why="one matmul on the transiently merged weight instead of the base matmul plus two rank-r ones",
    ),
    FastPath(
        name="oneDNN linear",
        fast="finetune_trainer.model.fast_linear:OneDnnLinear.forward",
        reference="torch.nn:Linear.forward",
        switch="prepare_model_for_training(..., fast_linear=False); non-fp32, non-CPU and autocast "
        "calls already run torch's",
        tests=(
            "tests/trainer/test_model_fast_linear.py::test_onednn_linear_matches_torch",
            "tests/trainer/test_model_fast_linear.py::test_matmul_nt_is_a_linear_on_any_strides",
        ),
        why="fp32 CPU matmuls through oneDNN, which uses AVX-512 on AMD CPUs where MKL does not",
    ),
    FastPath(
        name="packed attention",
        fast="finetune_trainer.model.packed_attention:packed_sdpa_attention_forward",
        reference="transformers.integrations.sdpa_attention:sdpa_attention_forward",
        switch="spec.model.attention: sdpa (SDPA with the block-diagonal mask transformers builds "
        "from restarting position ids); padded batches and generation already get SDPA",
        tests=(
            "tests/trainer/test_model_packed_attention.py::test_packed_logits_and_gradients_equal_masked_sdpa",
            "tests/trainer/test_model_packed_attention.py::test_packed_logits_equal_each_sample_alone",
            "tests/trainer/test_model_packed_attention.py::test_padded_batches_and_generation_fall_back_to_sdpa",
        ),
        why="causal SDPA per packed sample: attention FLOPs of sum(len²) instead of row²",
    ),
    FastPath(
        name="label-only LM head",
        fast="finetune_trainer.train.label_head:CausalLMTrainer.compute_loss",
        reference="transformers:Trainer.compute_loss",
        switch="CausalLMTrainer(head_on_labels_only=False), which spec.model.ligerKernel: true sets",
        tests=(
            "tests/trainer/test_train_label_head.py::test_label_only_loss_equals_the_models_loss",
            "tests/trainer/test_train_label_head.py::test_a_wrong_target_set_changes_the_loss",
            "tests/trainer/test_train_label_head.py::test_trainer_loss_and_gradients_match_the_stock_trainer",
        ),
        why="the head and log-softmax run on labelled positions only, not on every position × vocab",
    ),
    FastPath(
        name="per-word encode memo",
        fast="finetune_trainer.data.pieces:PieceCache.encode",
        reference="tokenizers:Tokenizer.encode_batch_fast",
        switch="Encoder.pieces = None; piece_cache_for gives None for a pipeline it cannot reproduce, "
        "and non-ASCII texts already go to the tokenizer",
        tests=(
            "tests/trainer/test_data_pieces.py::test_memo_gives_the_tokenizers_ids",
            "tests/trainer/test_data_pieces.py::test_memo_cuts_at_normalized_added_tokens_after_special_ones",
            "tests/trainer/test_data_pieces.py::test_memo_starts_again_past_its_limit",
            "tests/trainer/test_data_pieces.py::test_encoder_rows_are_the_same_with_and_without_the_memo",
        ),
        why="the tokenizer's model runs once per distinct word, not once per word of every text",
    ),
    FastPath(
        name="one-call batch tokenization",
        fast="finetune_trainer.data.processor:batch_encode",
        reference="transformers:PreTrainedTokenizerFast.__call__",
        switch="none: a tokenizer without a Rust backend already takes its own __call__",
        tests=(
            "tests/trainer/test_data_processing.py::test_batch_encode_matches_the_tokenizer",
            "tests/trainer/test_data_threads.py::test_threaded_and_single_threaded_encoding_give_the_same_tokens",
        ),
        why="a whole batch's texts in one call of the Rust tokenizer, without transformers' per-call wrapping",
    ),
    FastPath(
        name="batched supervised rows",
        fast="finetune_trainer.data.gather:supervised_columns",
        reference="finetune_trainer.data.processor:build_supervised",
        switch="none: build_supervised is the per-row rule (the kto rows still use it)",
        tests=(
            "tests/trainer/test_data_gather.py::test_batched_builder_matches_the_reference_on_every_setting",
            "tests/trainer/test_data_gather.py::test_encoder_matches_render_then_build_per_row",
        ),
        why="truncation plan and token gather over a batch's numpy arrays, no Python list per row",
    ),
    FastPath(
        name="in-process tokenizer threads",
        fast="finetune_trainer.data.threads:rust_threads",
        reference="datasets:Dataset.map",
        switch="FINETUNE_DATA_NUM_PROC=N (N > 1): forked datasets.map workers, the thread pool off in each",
        tests=(
            "tests/trainer/test_data_threads.py::test_threaded_and_single_threaded_encoding_give_the_same_tokens",
            "tests/trainer/test_data_pipeline.py::test_several_processes_give_the_same_rows",
        ),
        why="one process encoding on every core: no worker pool to start, no tokenizer to pickle, no shards to merge",
    ),
    FastPath(
        name="streamed export merge",
        fast="finetune_trainer.export.stream:write_streamed_shards",
        reference="finetune_trainer.export.pipeline:write_merged",
        switch="none: streaming_plan sends every case it does not reproduce (quantization, a .bin "
        "format, other LoRA variants, remote code) to the model-based merge, PEFT's merge_and_unload",
        tests=(
            "tests/trainer/test_export_stream.py::test_streamed_merge_equals_peft_merge_and_save",
            "tests/trainer/test_export_stream.py::test_a_whole_model_streams_like_the_model_based_export",
            "tests/trainer/test_export_stream.py::test_fan_in_fan_out_merges_the_transposed_weight",
        ),
        why="merged shards written tensor by tensor from the base files; memory is a tensor or two, not the model",
    ),
    FastPath(
        name="layerwise self-check logits",
        fast="finetune_trainer.export.layerwise:layerwise_logits",
        reference="finetune_trainer.export.verify:probe_logits",
        switch="as for the streamed export merge: the model-based export probes the loaded model",
        tests=("tests/trainer/test_export_stream.py::test_layerwise_logits_match_the_loaded_adapter_model",),
        why="the export's self-check holds one decoder block in memory, not the model",
    ),
    FastPath(
        name="private weights at load",
        fast="finetune_trainer.export.weights:load_private_weights",
        reference="transformers:PreTrainedModel.from_pretrained",
        switch="none: a base without local safetensors files keeps from_pretrained(dtype=...)'s own weights",
        tests=(
            "tests/trainer/test_export_weights.py::test_private_weights_equal_from_pretrained_in_the_export_dtype",
        ),
        why="each weight read by pread into its own memory, so merging into it does not copy the mapped file",
    ),
)
