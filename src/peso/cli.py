"""`peso` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
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
        resume(out, given, argv=argv, add_methods=args.add_methods)
    else:
        if args.add_methods is not None:
            raise PesoError(
                "--add-methods", "extends a run folder: it goes with --resume", "add --resume RUN_DIR"
            )
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


def _cmd_deploy(args: argparse.Namespace) -> int:
    from peso.live import deploy

    out = deploy(Path(args.run_dir), args.method, args.seed, Path(args.out))
    print(f"store: {out} (version 1 published: {args.method} after the run's last block)")
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from peso import dist
    from peso.live import update
    from peso.store import Store

    store = Store.open(Path(args.store))
    dist.world()  # several processes (torchrun / accelerate): the main one holds the lock and writes
    with store.lock() if dist.is_main() else contextlib.nullcontext():
        report = update(
            store, args.inputs, args.format, args.allow_late, args.guard, args.tolerance, args.dry_run
        )
    if not dist.is_main():
        return 0
    m = report["metrics"]
    print(
        f"version {report['version']}{' (dry run, not written)' if report['dry_run'] else ''}: "
        f"{report['slice']['interactions']:,} interactions, {report['slice']['new_users']:,} new users, "
        f"{report['slice']['new_items']:,} new items, {report['slice']['dropped_repeats']:,} repeats dropped; "
        f"drift (JS) {report['drift_js']:.3f}"
    )
    for name in ("new", "previous", "popular"):
        print(
            f"  {name:>8}: hit@10 {m[name]['hit@10']:.4f} ndcg@10 {m[name]['ndcg@10']:.4f} ({m[name]['users']} users)"
        )
    v = report["validation"]
    verdict = "published" if report["published"] else "NOT published"
    print(
        f"guard {report['guard']['rule']}: validation ndcg@10 {v['new']['ndcg@10']:.4f} vs "
        f"{v['previous']['ndcg@10']:.4f} (tolerance {report['guard']['tolerance']}): {verdict}"
    )
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from peso.store import Store

    store = Store.open(Path(args.store))
    current = store.current()
    table = Table(
        title=f"{store.path}: {store.info['method']} (seed {store.info['seed']}), current {current}"
    )
    for col in (
        "version",
        "created",
        "method",
        "data up to",
        "users",
        "items",
        "hit@10",
        "ndcg@10",
        "published",
    ):
        table.add_column(col, justify="right" if col not in ("created", "method") else "left")
    for n in store.versions():
        v = store.version(n)
        mark_ = " (current)" if n == current else ""
        table.add_row(
            f"{n}{mark_}",
            v["created"][:19],
            v["method"],
            str(v["data_up_to"]),
            f"{v['users']:,}",
            f"{v['items']:,}",
            f"{v['metrics']['hit@10']:.4f}",
            f"{v['metrics']['ndcg@10']:.4f}",
            "yes" if v["published"] else "no",
        )
    Console(width=max(Console().width, 120)).print(table)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from peso.store import Store

    store = Store.open(Path(args.store))
    with store.lock():
        current = store.current()
        target = args.to if args.to is not None else store.version(current).get("parent")
        if target is None:
            raise PesoError(str(store.path), f"version {current} has no earlier version", "give --to N")
        store.check_loadable(target)
        store.publish(target)
    print(f"current: {target} (was {current})")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    import json

    import polars as pl

    from peso.live import recommend
    from peso.store import Store

    if (args.user is None) == (args.history is None):
        raise PesoError("peso recommend", "needs --user or --history (one of them)", "e.g. --user 42")
    store = Store.open(Path(args.store))
    top_k = store.config().decode.top_k
    if not 1 <= args.k <= top_k:
        raise PesoError(
            "--k", f"{args.k} is not in 1..{top_k} (the store's decode.top_k)", f"give 1..{top_k}"
        )
    users = [args.user] if args.user is not None else None
    histories = None if args.history is None else [[i for i in args.history.split(",") if i]]
    version, lists = recommend(
        store, users, histories, args.k, args.exclude_history, cold_start=args.cold_start
    )
    cold = (histories is not None and not histories[0]) or (
        users is not None and store.interactions(version).filter(pl.col("user") == args.user).is_empty()
    )
    if args.json:
        print(json.dumps({"version": version, "items": [item for item, _ in lists[0]], "cold_start": cold}))
        return 0
    titles = store.titles(version)
    print(
        f"version {version}"
        + (" (cold start: no history, the model's empty-history list)" if cold else "")
        + ":"
    )
    for rank, (item, score) in enumerate(lists[0], start=1):
        title = " | ".join(t for t in (titles.get(i) for i in item.split("|")) if t)
        print(f"{rank:>3}. {item}  {score:.3f}" + (f"  {title}" if title else ""))
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    from peso.export_model import export_model
    from peso.store import Store

    out = export_model(Store.open(Path(args.store)), Path(args.out), args.version)
    print(
        f"export: {out} (merged/: plain checkpoint; base/ + adapter/: item rows in the base, LoRA on linear "
        "layers; trie.json, items.json)"
    )
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from peso.store import Store

    store = Store.open(Path(args.store))
    with store.lock():
        removed, freed = store.gc(args.keep)
    print(f"removed the state of {len(removed)} version(s) {removed}: {freed / 2**20:.1f} MiB freed")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from peso.serve import ServeSettings
    from peso.store import Store

    Store.open(Path(args.store))  # a folder that is no store says so before the server starts
    settings = ServeSettings(
        store=str(Path(args.store).resolve()),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        poll_ms=args.poll_ms,
        cold_start=args.cold_start,
        engine=args.engine,
    )
    os.environ["PESO_SERVE"] = settings.model_dump_json()  # what each worker process reads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        "peso.serve:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        access_log=False,
    )
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
    from peso.data.raw import FORMATS

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
        "       peso run --resume RUN_DIR [--config CONFIG] [--set KEY=VALUE ...] [--add-methods LIST]",
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
        "--add-methods",
        metavar="LIST",
        help="with --resume: a YAML list of method entries to run as well, from the run's block 0 (the folder "
        "then holds what a run listing them last would), e.g. '[{name: peso, lam: 10.0}]'",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder that peso wrote (kept until the new run completes its first unit)",
    )
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser(
        "deploy", help="create a model store from a finished run: one method's state as version 1"
    )
    d.add_argument("run_dir", metavar="RUN_DIR", help="a finished `peso run` folder")
    d.add_argument("--method", required=True, help="the method (its label in the run) to deploy")
    d.add_argument("--seed", type=int, help="which seed's state (default: the run's first)")
    d.add_argument(
        "--out", required=True, metavar="STORE", help="the store folder to create (must not exist)"
    )
    d.set_defaults(func=_cmd_deploy)

    u = sub.add_parser("update", help="one continual block on new interactions: a checked new version")
    u.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    u.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="new interactions, in any format `peso prepare` reads"
    )
    u.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: detect)")
    u.add_argument(
        "--allow-late", action="store_true", help="accept interactions older than the store's data"
    )
    u.add_argument(
        "--guard",
        default="no-worse",
        choices=["no-worse", "none"],
        help="publish only if validation NDCG@10 is not worse than the current version's (default), or always",
    )
    u.add_argument("--tolerance", type=float, default=0.0, help="how much worse the guard accepts (0.0)")
    u.add_argument("--dry-run", action="store_true", help="train and report, write and publish nothing")
    u.set_defaults(func=_cmd_update)

    v = sub.add_parser("versions", help="the store's versions as a table")
    v.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    v.set_defaults(func=_cmd_versions)

    b = sub.add_parser("rollback", help="move CURRENT back (to the parent version, or --to N)")
    b.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    b.add_argument("--to", type=int, help="the version to publish (default: the current one's parent)")
    b.set_defaults(func=_cmd_rollback)

    c = sub.add_parser("recommend", help="top-k items of the current version for a user or a history")
    c.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    c.add_argument("--user", help="a user the store has seen")
    c.add_argument("--history", help="comma-separated item ids, oldest first")
    c.add_argument("--k", type=int, default=10, help="items to list (<= the store's decode.top_k; 10)")
    c.add_argument("--exclude-history", action="store_true", help="leave out items of the history")
    c.add_argument(
        "--cold-start",
        action="store_true",
        help="an unknown --user gets the empty-history list (else exit 2)",
    )
    c.add_argument("--json", action="store_true", help='print {"version": N, "items": [...]} (best first)')
    c.set_defaults(func=_cmd_recommend)

    x = sub.add_parser("export-model", help="checkpoints that load without peso (transformers, PEFT, vLLM)")
    x.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    x.add_argument("--out", required=True, help="folder to write (must not exist)")
    x.add_argument("--version", type=int, help="which version (default: the current one)")
    x.set_defaults(func=_cmd_export_model)

    g = sub.add_parser("gc", help="remove the state of old versions that are not current")
    g.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    g.add_argument("--keep", type=int, default=5, help="newest versions kept whole, beside the current (5)")
    g.set_defaults(func=_cmd_gc)

    w = sub.add_parser("serve", help="serve the store's current version over HTTP (FastAPI + uvicorn)")
    w.add_argument("store", metavar="STORE", help="a model store written by `peso deploy`")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    w.add_argument("--port", type=int, default=8000, help="port (8000)")
    w.add_argument("--workers", type=int, default=1, help="server processes, each with its model (1)")
    w.add_argument("--max-batch", type=int, default=64, help="requests decoded together at most (64)")
    w.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more (5 ms)")
    w.add_argument("--poll-ms", type=float, default=500.0, help="how often CURRENT is checked (500 ms)")
    w.add_argument("--cold-start", action="store_true", help="answer unknown users from the empty history")
    w.add_argument(
        "--engine",
        default="beam",
        choices=["beam", "generate"],
        help="beam: batched trie beam search (default); generate: model.generate per request (a reference)",
    )
    w.set_defaults(func=_cmd_serve)

    m = sub.add_parser("methods", help="list the methods and each one's settings, with their defaults")
    m.add_argument("name", nargs="?", help="one method (default: all)")
    m.set_defaults(func=_cmd_methods)

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
