"""The API objects (``finetune_api``) unpacked, once, into the data worker's settings."""

from __future__ import annotations

from pathlib import Path

from finetune_api.dataset import DatasetSpec
from finetune_api.finetunejob import FineTuneJobSpec, MixStrategy, TrainingSpec
from finetune_api.method import Stage
from finetune_api.pod import dataset_credentials_dirs

from .config import (
    ColumnNames,
    DatasetConfig,
    ProcessingConfig,
    RoleTags,
    default_cache_dir,
    default_columns,
    merge_columns,
)

DEFAULT_RESPONSE_RESERVE = 0.25


def dataset_config(spec: DatasetSpec, *, name: str = "", weight: float = 1.0) -> DatasetConfig:
    """A Dataset's spec as a :class:`DatasetConfig`; ``name`` is the Dataset's name (used in messages)."""
    columns: ColumnNames | None = None
    if spec.columns is not None:
        given = spec.columns.model_dump(exclude={"text"})
        if spec.columns.text:  # the text format's column is the "prompt" slot inside the worker
            given["prompt"] = spec.columns.text
        columns = merge_columns(default_columns(spec.format.value, ranking=spec.ranking), given)
    tags: RoleTags | None = None
    if spec.tags is not None:
        base = DatasetConfig(source="", format=spec.format.value).resolved_tags()
        overrides = {k: v for k, v in spec.tags.model_dump().items() if v}
        tags = RoleTags(**{**base.__dict__, **overrides})
    return DatasetConfig(
        source=spec.source,
        name=name,
        file_type=spec.file_type,
        format=spec.format.value,
        ranking=spec.ranking,
        columns=columns,
        tags=tags,
        split=spec.split,
        subset=spec.subset,
        max_samples=spec.max_samples,
        weight=weight,
        s3_endpoint=spec.endpoint,
        credentials_dir=dataset_credentials_dirs().get(name),
    )


def processing_config(
    training: TrainingSpec,
    stage: Stage,
    *,
    mix_strategy: MixStrategy = MixStrategy.CONCAT,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: Path | None = None,
) -> ProcessingConfig:
    """``training``, ``stage`` and ``mix_strategy`` (a FineTuneJob's sections) as a :class:`ProcessingConfig`.

    The API has no response-reserve field; a quarter of the cutoff is kept for the response.
    """
    return ProcessingConfig(
        stage=stage,
        template=training.template.value,
        cutoff_len=training.cutoff_len,
        packing=training.packing,
        train_on_prompt=training.train_on_prompt,
        mask_history=training.mask_history,
        response_reserve_ratio=DEFAULT_RESPONSE_RESERVE,
        val_size=training.val_size,
        seed=training.seed,
        mix_strategy=mix_strategy,
        streaming=streaming,
        num_proc=num_proc,
        cache_dir=cache_dir or default_cache_dir(),
    )


def job_processing_config(job: FineTuneJobSpec, *, cache_dir: Path | None = None) -> ProcessingConfig:
    """The processing settings of a whole FineTuneJob spec (training, method.stage, mixStrategy)."""
    return processing_config(
        job.training, job.method.stage, mix_strategy=job.mix_strategy, cache_dir=cache_dir
    )
