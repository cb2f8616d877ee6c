"""The trainer's data worker: loader → aligner → template → processor → collator (LLaMA-Factory's shape).

Entry points for training recipes:
    ``prepare_dataset(datasets, processing, tokenizer) -> PreparedData``
    ``make_collator(processing, tokenizer) -> collator``
and for the operator's Dataset status: ``validate_dataset(spec, tokenizer=...) -> DatasetReport``.
``dataset_config`` / ``processing_config`` / ``job_processing_config`` unpack the API objects.
"""

from .collator import KtoCollator, PackedCollator, PaddingCollator, PairwiseCollator, block_causal_mask
from .config import IGNORE_INDEX, ColumnNames, DatasetConfig, ProcessingConfig, RoleTags, Shape
from .from_api import dataset_config, job_processing_config, processing_config
from .loader import MalformedDatasetError
from .pipeline import DatasetSummary, PreparedData, make_collator, pad_token_id, prepare_dataset
from .template import TEMPLATES, ChatTemplate, get_template, stop_token_ids
from .validate import DatasetReport, TokenStats, validate_dataset

__all__ = [
    "IGNORE_INDEX",
    "TEMPLATES",
    "ChatTemplate",
    "ColumnNames",
    "DatasetConfig",
    "DatasetReport",
    "DatasetSummary",
    "KtoCollator",
    "MalformedDatasetError",
    "PackedCollator",
    "PaddingCollator",
    "PairwiseCollator",
    "PreparedData",
    "ProcessingConfig",
    "RoleTags",
    "Shape",
    "TokenStats",
    "block_causal_mask",
    "dataset_config",
    "get_template",
    "job_processing_config",
    "make_collator",
    "pad_token_id",
    "prepare_dataset",
    "processing_config",
    "stop_token_ids",
    "validate_dataset",
]
