"""The `finetune` command: validate, explain and generate the API; run and export locally.

Only `run` and `export` import the training stack (torch and friends); the rest stays light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from finetune_api.crdgen import CRD_DIR, render_crds, write_crds
from finetune_api.explain import explain
from finetune_api.manifests import STDIN, load_documents, split_overrides
from finetune_api.validation import validate_documents

from .terminate import guarded

DISTRIBUTION = "finetune-operator"


def cmd_validate(args: argparse.Namespace) -> int:
    """Schema + CEL + Dataset references (+ cluster rules) on every document; exit 1 listing every error."""
    try:
        docs = load_documents(args.files)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results = validate_documents(
        [d.body for d in docs], allow_missing_datasets=args.allow_missing_datasets, cluster=args.cluster
    )
    failed = 0
    for i, doc in enumerate(docs):
        errors = results[i]
        if errors:
            failed += 1
            print(f"{doc.label}: invalid")
            for error in errors:
                print(f"  {error}")
        elif not args.quiet:
            print(f"{doc.label}: valid")
    if not docs:
        print("error: no documents found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_crds(args: argparse.Namespace) -> int:
    """Print the CRDs, write them (--write; into crds/ also the chart's copy), or check both are current (--check)."""
    rendered = render_crds()
    if args.check:
        stale = [
            n
            for n, text in rendered.items()
            if not (CRD_DIR / n).is_file() or (CRD_DIR / n).read_text() != text
        ]
        for name in stale:
            print(f"{CRD_DIR / name} is out of date; run `finetune crds --write`", file=sys.stderr)
        return 1 if stale else 0
    if args.write is not None:
        for path in write_crds(Path(args.write)):
            print(f"wrote {path}")
        return 0
    print("---\n".join(rendered.values()), end="")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Field documentation, like kubectl explain."""
    try:
        print(explain(args.target, recursive=args.recursive))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train locally, exactly as the trainer pod would."""
    from .run import run_from_files  # imports torch: only here

    files, overrides = split_overrides([*args.files, *args.overrides])
    if not files:
        print("error: no file given (FILE... then key=value overrides)", file=sys.stderr)
        return 2
    return run_from_files(
        files,
        job_name=args.job,
        output=args.output,
        overrides=overrides,
        overwrite=args.overwrite,
        resume=args.resume,
    )


def cmd_validate_data(args: argparse.Namespace) -> int:
    """Check Datasets' rows (and token lengths with --model) as the operator's validation Job does."""
    from .datacheck import validate_data_from_files

    return validate_data_from_files(
        args.files, model=args.model, cutoff_len=args.cutoff_len, allow_invalid_rows=args.allow_invalid_rows
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Export locally, exactly as the export pod would."""
    from .export import export_from_files  # arrives with the export issue

    return int(export_from_files(args.files))


def version() -> str:
    """The installed distribution's version; the source tree's when running from a checkout."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown (not installed: run from a source checkout)"


FILES_HELP = f"YAML files, several documents each allowed; {STDIN} reads stdin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate manifests (schema, CEL rules, Dataset references)")
    p.add_argument("files", nargs="+", help=FILES_HELP)
    p.add_argument(
        "--allow-missing-datasets",
        action="store_true",
        help="a referenced Dataset need not be among the files (it is on the cluster already)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also the rules of running in a pod: an s3:// output, no file:// models or data",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only invalid documents")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("crds", help="print, write or check the generated CRDs")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", nargs="?", const=str(CRD_DIR), default=None, metavar="DIR")
    group.add_argument("--check", action="store_true", help="exit 1 when crds/ differs from the models")
    p.set_defaults(func=cmd_crds)

    p = sub.add_parser("explain", help="document a kind or field, e.g. finetunejob.spec.method.lora")
    p.add_argument("target", metavar="KIND[.path]")
    p.add_argument(
        "--recursive", action="store_true", help="the whole subtree, as YAML with the defaults filled in"
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("run", help="run a FineTuneJob locally (output defaults to file://./runs/<name>)")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help=f"the FineTuneJob and its Datasets ({STDIN}: stdin)"
    )
    # argparse hands every positional to `files`; cmd_run tells the overrides apart by their `=`.
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the FineTuneJob's spec after the files, e.g. training.learningRate=1e-4 "
        "method.lora.rank=16 (camelCase paths, YAML values; an empty value unsets)",
    )
    p.add_argument("--job", help="which FineTuneJob to run when the files hold several")
    p.add_argument("--output", help="override spec.output.uri")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the run already in the output location and start afresh",
    )
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output location although the spec changed, where its checkpoints allow",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate-data", help="check Datasets' rows; exit 1 when a row is invalid")
    p.add_argument("files", nargs="+", help=f"YAML files holding Datasets; {STDIN} reads stdin")
    p.add_argument("--model", help="model source whose tokenizer measures token lengths, e.g. tiny://llama")
    p.add_argument("--cutoff-len", type=int, help="count samples longer than this many tokens")
    p.add_argument(
        "--allow-invalid-rows",
        action="store_true",
        help="exit 0 when a Dataset is usable though some rows are invalid (they are left out of training)",
    )
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("export", help="run an Export locally")
    p.add_argument("files", nargs="+", help=FILES_HELP)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: int(args.func(args)))  # SIGTERM ends it with 143, also as a pod's PID 1


if __name__ == "__main__":
    sys.exit(main())
