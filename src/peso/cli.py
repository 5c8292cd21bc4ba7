"""`peso` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peso.errors import PesoError


def _cmd_run(args: argparse.Namespace) -> int:
    from peso.config import load_config
    from peso.runner import resume, run
    from peso.units import load_resumable

    argv = ["peso", *sys.argv[1:]]
    if args.resume:
        if args.out or args.overwrite:
            raise PesoError(
                "--resume", "takes neither --out nor --overwrite: RUN_DIR is the run folder", "drop them"
            )
        out = Path(args.resume)
        if args.config is None and args.set:  # --set alone: the saved config with it must be the saved one
            load_resumable(out)  # a folder that cannot be resumed says so first
            args.config = out / "config.yaml"
        given = load_config(args.config, args.set) if args.config else None
        resume(out, given, argv=argv)
    else:
        if not args.config or not args.out:
            raise PesoError("peso run", "needs --config and --out", "give both, or --resume RUN_DIR")
        out = Path(args.out)
        cfg = load_config(args.config, args.set)
        run(cfg, out, overwrite=args.overwrite, argv=argv, inputs=[Path(args.config)])
    from peso.io import is_main

    if is_main():
        print(f"results: {out / 'results.md'}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from peso.data.export import check_export, export_release
    from peso.data.prepare import CutSettings, prepare
    from peso.data.raw import Columns

    out = Path(args.out)
    export = Path(args.export_release) if args.export_release else None
    if export is not None:  # before anything is written
        check_export(export, args.overwrite, [Path(i) for i in args.inputs] + [out])
    settings = CutSettings(args.base_fraction, args.blocks, args.min_items, args.kcore)
    columns = Columns(args.user_col, args.item_col, args.time_col)
    prep = prepare(args.inputs, out, args.format, columns, settings, overwrite=args.overwrite, name=args.name)
    st = prep.stats
    console = Console(width=max(Console().width, 110))  # the table fits without wrapping in a log file
    table = Table(
        title=f"{st['name']} ({st['format']}): {st['interactions']:,} interactions, "
        f"{st['users']:,} users, {st['items']:,} items"
    )
    for col in (
        "block",
        "interactions",
        "users",
        "eval users",
        "items",
        "new users",
        "new items",
        "from",
        "to",
    ):
        table.add_column(col, justify="left" if col in ("from", "to") else "right", no_wrap=True)
    for b in st["per_block"]:
        table.add_row(
            str(b["block"]),
            f"{b['interactions']:,}",
            f"{b['users']:,}",
            f"{b['evaluated_users']:,}",
            f"{b['items']:,}",
            f"{b['new_users']:,}",
            f"{b['new_items']:,}",
            (b["date_start"] or "-")[:10],
            (b["date_end"] or "-")[:10],
        )
    console.print(table)
    print(
        f"dropped: {st['duplicates_dropped']:,} repeated user-item pairs, {st['kcore_dropped']:,} by k-core; "
        f"{st['items_with_title']:,} items with a title"
    )
    print(f"data: {out}")
    if export is not None:
        files = export_release(out, export, overwrite=args.overwrite)
        print(f"release format: {export} ({len(files)} files)")
    if not st["index"]:
        print(f"no semantic-ID index yet: run `peso tokenize {out}` before `peso run`")
    return 0


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from peso.tokenize.build import tokenize

    r = tokenize(
        args.data_dir,
        args.method,
        encoder=args.encoder,
        index_file=args.index,
        levels=args.levels,
        codes=args.codes,
        dim=args.dim,
        seed=args.seed,
        quantizer=args.quantizer,
    )
    print(
        f"{r['items']:,} items tokenized ({r['method']}) in {r['seconds']} s; new items per block: "
        + ", ".join(f"{b}: {n:,}" for b, n in r["new_items_per_block"].items())
    )
    if "collision_rate_before_dedup" in r:
        usage = ", ".join(f"{u:.0%}" for u in r["codebook_usage"])
        print(
            f"collision rate before de-duplication: {r['collision_rate_before_dedup']:.2%} of items; "
            f"codebook usage per level: {usage}; de-duplication codes used: {r['dedup_codes_used']}"
        )
    print(f"index: {Path(args.data_dir) / 'index.json'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from peso.data.export import export_release

    files = export_release(args.data_dir, args.out, overwrite=args.overwrite)
    print(f"release format: {args.out} ({len(files)} files)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from peso.data.simulate import SimParams, simulate

    params = SimParams(
        users=args.users,
        items=args.items,
        clusters=args.clusters,
        blocks=args.blocks,
        new_items_per_block=args.new_items_per_block,
        interactions_per_block=args.interactions_per_block,
        shift_share=args.shift_share,
        past_weight=args.past_weight,
        drift=args.drift,
        sequential=args.sequential,
        temperature=args.temperature,
        base_factor=args.base_factor,
        trend_share=args.trend_share,
        trend_items=args.trend_items,
        trend_persistence=args.trend_persistence,
        new_item_share=args.new_item_share,
        seed=args.seed,
        tokens=args.tokens,
    )
    st = simulate(args.out, params, overwrite=args.overwrite, name=args.name)
    print(
        f"{st['name']} (simulated): {st['interactions']:,} interactions, {st['users']:,} users, "
        f"{st['items']:,} items in {len(st['per_block'])} blocks"
    )
    for b in st["per_block"]:
        print(
            f"  block {b['block']}: {b['interactions']:,} interactions, {b['evaluated_users']:,} evaluated "
            f"users, {b['new_items']:,} new items"
        )
    print(f"data: {args.out}" + ("" if st["index"] else f" (no index: run `peso tokenize {args.out}`)"))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from peso.strategies import REGISTRY

    names = [args.name] if args.name else sorted(REGISTRY)
    for name in names:
        if name not in REGISTRY:
            raise PesoError(
                "methods", f"unknown method '{name}'", f"choose from {', '.join(sorted(REGISTRY))}"
            )
        cls = REGISTRY[name]
        kind = "adapter strategy" if cls.uses_backbone else "standalone"
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        print(f"{name} ({kind})" + (f": {doc}" if doc else ""))
        for field, info in cls.Settings.model_fields.items():
            if field in ("name", "label"):
                continue
            print(f"    {field} = {info.default!r}" + (f"  {info.description}" if info.description else ""))
    print("\nuse: methods: [single, {name: peso, lam: 1.0e+5, label: peso-1e5}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from peso import __version__

    parser = argparse.ArgumentParser(
        prog="peso", description="Continual LoRA adaptation of generative recommenders."
    )
    parser.add_argument("--version", action="version", version=f"peso {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="train and evaluate methods block by block",
        description="Train block 0, adapt every method to each later block, evaluate each block's test "
        "targets, and write results, adapters and the resolved config to RUN_DIR. A killed run continues "
        "with --resume.",
        usage="peso run --config CONFIG --out RUN_DIR [--set KEY=VALUE ...] [--overwrite]\n"
        "       peso run --resume RUN_DIR [--config CONFIG] [--set KEY=VALUE ...]",
    )
    r.add_argument(
        "--config", help="YAML run configuration (required; with --resume optional and must be the run's)"
    )
    r.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run folder for results, adapters and the resolved config (required, unless --resume)",
    )
    r.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed run from its last completed method, with its saved config.yaml",
    )
    r.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3"
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder that peso wrote (kept until the new run completes its first unit)",
    )
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser("methods", help="list the methods and each one's settings, with their defaults")
    m.add_argument("name", nargs="?", help="one method (default: all)")
    m.set_defaults(func=_cmd_methods)

    from peso.data.raw import FORMATS

    p = sub.add_parser("prepare", help="cut raw interaction logs into chronological blocks (a DATA_DIR)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders of one dataset")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: detect)")
    p.add_argument("--out", required=True, help="DATA_DIR to write (parquet blocks, items, stats.json)")
    p.add_argument("--user-col", help="user column (csv/tsv/parquet/recbole; default: user_id, userId, ...)")
    p.add_argument("--item-col", help="item column (default: item_id, movieId, asin, ...)")
    p.add_argument("--time-col", help="timestamp column (default: timestamp, time, ...)")
    p.add_argument("--base-fraction", type=float, default=0.6, help="share of interactions in block 0 (0.6)")
    p.add_argument("--blocks", type=int, default=5, help="number of blocks, base block included (5)")
    p.add_argument("--min-items", type=int, default=3, help="users with fewer items in a block skip it (3)")
    p.add_argument("--kcore", type=int, default=None, help="keep users and items with >= K interactions")
    p.add_argument("--name", help="dataset name (default: the release name or the --out folder name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR / export folder")
    p.add_argument(
        "--export-release", metavar="FOLDER", help="also write the blocks in the release JSON format"
    )
    p.set_defaults(func=_cmd_prepare)

    k = sub.add_parser("tokenize", help="give every item of a DATA_DIR its semantic-ID tokens (index.json)")
    k.add_argument("data_dir", metavar="DATA_DIR", help="a folder written by `peso prepare`")
    k.add_argument(
        "--method",
        default="text",
        choices=["text", "collab", "atomic", "import"],
        help="text: title/description embeddings; collab: base-block interactions; atomic: one token "
        "per item; import: a released index (default: text)",
    )
    k.add_argument("--encoder", help="sentence-transformers or HF encoder folder (default: packaged MiniLM)")
    k.add_argument("--index", help="index JSON file for --method import")
    k.add_argument(
        "--quantizer",
        default="rkmeans",
        choices=["rkmeans", "rqvae"],
        help="residual k-means (default) or RQ-VAE (TIGER / LC-Rec style)",
    )
    k.add_argument("--levels", type=int, default=3, help="residual k-means levels before de-duplication (3)")
    k.add_argument("--codes", type=int, default=256, help="codes per level (256)")
    k.add_argument("--dim", type=int, default=64, help="collaborative embedding size (64)")
    k.add_argument("--seed", type=int, default=0, help="seed of the k-means / RQ-VAE / SVD fits (0)")
    k.set_defaults(func=_cmd_tokenize)

    s = sub.add_parser(
        "simulate", help="generate a synthetic DATA_DIR with controlled preference dynamics (tokenized)"
    )
    s.add_argument("--out", required=True, help="DATA_DIR to write (must not exist, or be empty)")
    s.add_argument("--users", type=int, default=2000, help="users, all present from block 0 (2000)")
    s.add_argument("--items", type=int, default=1000, help="items in block 0's catalogue (1000)")
    s.add_argument("--clusters", type=int, default=20, help="latent genres (20)")
    s.add_argument("--blocks", type=int, default=5, help="chronological blocks, base block included (5)")
    s.add_argument(
        "--new-items-per-block",
        type=float,
        default=0.05,
        help="new items per later block, share of --items (0.05)",
    )
    s.add_argument(
        "--interactions-per-block", type=float, default=6.0, help="mean interactions per user and block (6)"
    )
    s.add_argument(
        "--shift-share",
        type=float,
        default=0.1,
        help="share of users whose long-term taste is replaced per block (0.1)",
    )
    s.add_argument(
        "--past-weight",
        type=float,
        default=0.5,
        help="weight of long-term vs drifting short-term taste (0.5)",
    )
    s.add_argument("--drift", type=float, default=0.3, help="short-term taste step per block, 0..1 (0.3)")
    s.add_argument("--sequential", type=float, default=3.0, help="pull of the previous item on the next (3)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of each pick (1)")
    s.add_argument(
        "--base-factor", type=float, default=3.0, help="block 0 holds this many times a later block (3)"
    )
    # item-side dynamics, invisible in a user's history: the defaults (shares 0) give the old world exactly
    s.add_argument(
        "--trend-share",
        type=float,
        default=0.0,
        help="share of picks drawn uniformly from the block's hot set, whatever the user's taste (0: off)",
    )
    s.add_argument("--trend-items", type=int, default=20, help="items in each block's hot set (20)")
    s.add_argument(
        "--trend-persistence",
        type=float,
        default=0.0,
        help="chance a hot item stays hot in the next block (0: a new trend every block)",
    )
    s.add_argument(
        "--new-item-share",
        type=float,
        default=0.0,
        help="share of a later block's picks drawn by taste among the items arriving in it (0: off)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the generator (0)")
    s.add_argument(
        "--tokens",
        default="atomic",
        choices=["atomic", "latent", "none"],
        help="index.json: one token per item (default), <genre><n> semantic IDs, or none (tokenize later)",
    )
    s.add_argument("--name", help="dataset name (default: the --out folder name)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    s.set_defaults(func=_cmd_simulate)

    e = sub.add_parser("export", help="write a DATA_DIR (blocks + index) in the PESO release JSON format")
    e.add_argument(
        "data_dir", metavar="DATA_DIR", help="a folder written by `peso prepare` or `peso simulate`"
    )
    e.add_argument("--out", required=True, help="folder for <NAME>.all.block_<t>.json and <NAME>.index.json")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier `peso export` folder")
    e.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():  # a log file gets one line per epoch, not the libraries' bar frames
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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
