"""`peso` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peso.errors import PesoError


def _cmd_run(args: argparse.Namespace) -> int:
    from peso.config import load_config
    from peso.runner import run

    cfg = load_config(args.config, args.set)
    run(cfg, Path(args.out), overwrite=args.overwrite, argv=["peso", *sys.argv[1:]])
    print(f"results: {Path(args.out) / 'results.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peso", description="Continual LoRA adaptation of generative recommenders.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate methods block by block")
    r.add_argument("--config", required=True, help="YAML run configuration")
    r.add_argument("--out", required=True, help="run folder for results, adapters and the resolved config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    r.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PesoError as e:
        print(f"peso: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peso: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
