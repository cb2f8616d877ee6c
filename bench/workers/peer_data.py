"""LLaMA-Factory's side of bench/data_preprocess.py: its ``get_dataset`` (what ``llamafactory-cli
train`` runs before the model loads), with ``tokenized_path`` so the result is saved to disk as
ours is. Run with the peer venv's python (imports nothing of ours); prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cputime import cpu_seconds  # bench/workers/ is this script's sys.path[0]
from peer_compat import text_only_torchaudio  # bench/workers/ is this script's sys.path[0]

text_only_torchaudio()

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cutoff", type=int, required=True)
    parser.add_argument("--num-proc", type=int, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--template", default="chatml")
    args = parser.parse_args()

    dataset_dir = args.work_dir / "dataset_dir"
    dataset_dir.mkdir(parents=True)
    # The alpaca columns (instruction/input/output) are LLaMA-Factory's defaults.
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(args.data)}}))
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(args.model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "bench",
            "dataset_dir": str(dataset_dir),
            "template": args.template,
            "cutoff_len": args.cutoff,
            "preprocessing_num_workers": args.num_proc,
            "overwrite_cache": True,
            "tokenized_path": str(args.work_dir / "tokenized"),
            "output_dir": str(args.work_dir / "out"),
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    train = module["train_dataset"]
    tokens = int(sum(len(ids) for ids in train.with_format("arrow")["input_ids"].to_pylist()))
    print(json.dumps({"samples": len(train), "seconds": seconds, "cpu_seconds": cpu, "tokens": tokens}))


if __name__ == "__main__":
    main()
