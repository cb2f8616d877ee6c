"""Our side of bench/data_preprocess.py: ``prepare_dataset`` on a cold cache, timed; prints one JSON line.

Run in the project venv: ``python -m bench.workers.ours_data --data F --model DIR --cutoff N --num-proc 2 --cache-dir D``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoTokenizer

from bench.workers.cputime import cpu_seconds
from finetune_api.method import Stage
from finetune_trainer.data import DatasetConfig, ProcessingConfig, prepare_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cutoff", type=int, required=True)
    parser.add_argument("--num-proc", type=int, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--template", default="chatml")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    datasets = [DatasetConfig(source=f"file://{args.data}", name="bench", format="alpaca")]
    processing = ProcessingConfig(
        stage=Stage.SFT,
        template=args.template,
        cutoff_len=args.cutoff,
        num_proc=args.num_proc,
        cache_dir=args.cache_dir,  # empty: the timed run loads, tokenises and saves from scratch
    )
    started, cpu_started = time.perf_counter(), cpu_seconds()
    data = prepare_dataset(datasets, processing, tokenizer)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    assert not data.cache_hit, "the cache must be cold for the timed run"
    lengths = data.train.with_format("arrow")["input_ids"]
    tokens = int(sum(len(row) for row in lengths.to_pylist())) if len(data.train) < 200_000 else -1
    print(json.dumps({"samples": len(data.train), "seconds": seconds, "cpu_seconds": cpu, "tokens": tokens}))


if __name__ == "__main__":
    main()
