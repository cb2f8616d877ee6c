"""Mixing several datasets and holding out a validation split."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import IterableDataset, concatenate_datasets, interleave_datasets

from .config import AnyDataset, MixStrategy


def mix_datasets(
    datasets: Sequence[AnyDataset], *, weights: Sequence[float], strategy: MixStrategy, seed: int
) -> AnyDataset:
    """Combine datasets: concatenated, or interleaved with sampling probabilities from ``weights``.

    ``interleave_under`` stops when the first dataset runs out (under-samples the rest);
    ``interleave_over`` goes on until every dataset has been seen once (over-samples the small ones).

    Raises:
        ValueError: no datasets, or weights that are not positive.
    """
    if not datasets:
        raise ValueError("datasets: at least one dataset is needed")
    if len(datasets) == 1:
        return datasets[0]
    if strategy is MixStrategy.CONCAT:
        return concatenate_datasets(list(datasets))
    if len(weights) != len(datasets) or any(w <= 0 for w in weights):
        raise ValueError("datasets[].weight: each weight must be positive")
    total = float(sum(weights))
    return interleave_datasets(
        list(datasets),
        probabilities=[w / total for w in weights],
        seed=seed,
        stopping_strategy="first_exhausted" if strategy is MixStrategy.INTERLEAVE_UNDER else "all_exhausted",
    )


def split_validation(ds: AnyDataset, *, val_size: float, seed: int) -> tuple[AnyDataset, AnyDataset | None]:
    """Hold out ``val_size`` rows (a fraction below 1, else a count) as the validation set.

    Raises:
        ValueError: a split that leaves no training rows, or a fraction on a stream (length unknown).
    """
    if val_size <= 0:
        return ds, None
    if isinstance(ds, IterableDataset):
        if val_size < 1:
            raise ValueError("training.valSize: a streamed dataset needs an absolute count, not a fraction")
        count = int(val_size)
        return ds.skip(count), ds.take(count)
    test_size: float | int = val_size if val_size < 1 else int(val_size)
    if isinstance(test_size, int) and test_size >= len(ds):
        raise ValueError(
            f"training.valSize: {test_size} rows leaves nothing to train on (the data has {len(ds)})"
        )
    parts = ds.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
