"""``python -m bench.gpu prepare|check``: see bench/gpu/__init__.py and bench/README.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import REPO
from bench.gpu import check, wheels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and build the wheels the device lacks (run here)")
    prep.add_argument("--wheels", type=Path, default=REPO / ".whl", help="the git-ignored wheels folder")
    prep.add_argument("--set", dest="sets", action="append", choices=wheels.SETS, help="only these sets")
    prep.add_argument("--project-only", action="store_true", help="only this checkout's wheel: no download")
    run = sub.add_parser("check", help="install the wheels into scratch paths and run every part")
    check.add_arguments(run)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        wheels.prepare(args.wheels, tuple(args.sets or wheels.SETS), project_only=args.project_only)
        print(wheels.carry_report(args.wheels))
    else:
        check.main(args)


if __name__ == "__main__":
    main()
