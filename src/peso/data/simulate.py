"""`peso simulate`: synthetic interaction logs with controlled preference dynamics, written as a DATA_DIR.

The world (numpy only, one seeded generator, so the same parameters give the same files):
- Catalogue: `clusters` genres, each a random unit centre in a `dim`-dimensional latent space; an item is
  its genre's centre plus noise (unit length), with a log-popularity bias ~ N(0, 1). Block 0 has `items`
  items; every later block adds round(new_items_per_block * items) new ones, usable from that block on.
- Users: a long-term taste L (genre weights ~ Dirichlet(0.1): one or two favourite genres, as a vector
  sum_k w_k centre_k) and a short-term taste S drawn the same way. Between blocks S takes a random-walk
  step, S <- (1 - drift) S + drift S_fresh, and at every boundary a fresh random `shift_share` of users get
  a new L (a sharp shift, recorded in truth_users.parquet). Taste in block t: past_weight L + (1 - past_weight) S.
- Sessions: per block a user makes Poisson(interactions_per_block) picks (x base_factor in block 0, the
  long base history), one after another, each sampled without repeats by
  softmax((8 taste . v_i + sequential v_prev . v_i) / temperature + popularity_i): the next item tends to lie
  near the previous one, so a sequence model has something to learn. Timestamps rise through the blocks.
- Item-side dynamics (off by default; the prompt cannot show them, so only a model that updates its weights
  on the block can follow them): each pick is, with probability `trend_share`, a *trend* pick, drawn uniformly
  from the block's hot set of `trend_items` items (independent of the user's taste and history), or, in a
  later block and with probability `new_item_share`, a *fresh* pick, drawn by the taste model among the items
  that arrive in this very block (IDs no earlier block trained on); otherwise the taste pick above. A trend or
  fresh pick with nothing left that the user has not seen falls back to the taste pick. Block 0 gets a hot
  set of `trend_items` available items drawn uniformly; at each later boundary each hot item stays with
  probability `trend_persistence` and the others are replaced by fresh uniform draws among the items
  available then (0: a new trend every block; 1: a fixed popularity boost). A small hot set with a large
  share is a trend that dominates the block and changes (plasticity pays); a large hot set with a modest
  share is a diffuse fad, noise for a recommender that must keep the long-term taste (stability pays). The
  hot sets are written to truth_trends.parquet. With both shares 0 no extra random number is drawn: the old
  parameters give the old world, pick for pick.

The DATA_DIR is what `peso prepare` writes (interactions.parquet, items.parquet without text, stats.json
with the generator's parameters under "simulation") plus index.json made by `peso tokenize`'s own code
(atomic: one token per item; latent: <a_genre><b_n> semantic IDs from the true genres), so `peso run` reads
it as is, and truth_items.parquet / truth_users.parquet (and truth_trends.parquet, when trend_share > 0)
with the latent truth. Every parameter, the item-side ones included, is in stats.json and so in a run's
manifest. All of it is written to a temp folder and renamed: a failed call leaves nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from peso.data.prepare import INDEX, INTERACTIONS, ITEMS, STATS, block_stats
from peso.errors import PesoError
from peso.io import atomic_dir, check_out

TOKENS = ("atomic", "latent", "none")
MIN_ITEMS = 3  # a user is evaluated in a block with >= 3 items there, as `peso prepare`'s default
START = 1_577_836_800  # 2020-01-01 UTC: synthetic but plausible unix times
BLOCK_SECONDS = 30 * 86_400
TASTE_SCALE = 8.0  # favourite genres win clearly at temperature 1, yet the sequential pull still shows
ITEM_SPREAD = 0.7  # noise around a genre centre: items of a genre are alike but have distinct neighbours
POPULARITY = 1.0  # sd of the log-popularity bias: a long tail, so popularity is a real baseline
DIRICHLET = 0.1  # << 1: a taste concentrates on one or two genres


@dataclass
class SimParams:
    """Generator settings (the CLI flags); `check` names the flag of a bad value."""

    users: int = 2000
    items: int = 1000
    clusters: int = 20
    blocks: int = 5
    new_items_per_block: float = 0.05
    interactions_per_block: float = 6.0
    shift_share: float = 0.1
    past_weight: float = 0.5
    drift: float = 0.3
    sequential: float = 3.0
    temperature: float = 1.0
    base_factor: float = 3.0
    trend_share: float = 0.0
    trend_items: int = 20
    trend_persistence: float = 0.0
    new_item_share: float = 0.0
    dim: int = 32
    seed: int = 0
    tokens: str = "atomic"

    def check(self) -> None:
        for flag, value, least in (
            ("--users", self.users, 1),
            ("--items", self.items, 1),
            ("--clusters", self.clusters, 1),
            ("--trend-items", self.trend_items, 1),
            ("--dim", self.dim, 1),
            ("--seed", self.seed, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise PesoError(flag, f"{value} is not a count >= {least}", f"pass an integer >= {least}")
        if self.blocks < 2:
            raise PesoError(
                "--blocks", f"{self.blocks} blocks: a continual run needs a base block and one more", "e.g. 5"
            )
        if self.clusters > self.items:
            raise PesoError(
                "--clusters",
                f"{self.clusters} genres for {self.items} items: every genre needs items",
                f"use --clusters <= --items (e.g. --clusters {max(1, self.items // 10)}), or raise --items",
            )
        for flag, value in (
            ("--new-items-per-block", self.new_items_per_block),
            ("--shift-share", self.shift_share),
            ("--past-weight", self.past_weight),
            ("--drift", self.drift),
            ("--trend-share", self.trend_share),
            ("--trend-persistence", self.trend_persistence),
            ("--new-item-share", self.new_item_share),
        ):
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise PesoError(flag, f"{value} is not a share between 0 and 1", "pass a value in [0, 1]")
        if self.trend_share + self.new_item_share > 1.0:
            raise PesoError(
                "--new-item-share",
                f"{self.new_item_share} + --trend-share {self.trend_share} exceeds 1: they split each pick",
                "lower one of the two so that they sum to at most 1",
            )
        for flag, value in (
            ("--interactions-per-block", self.interactions_per_block),
            ("--temperature", self.temperature),
            ("--base-factor", self.base_factor),
        ):
            if not value > 0.0 or not np.isfinite(value):
                raise PesoError(flag, f"{value} is not a positive number", "pass a value > 0")
        if not self.sequential >= 0.0 or not np.isfinite(self.sequential):
            raise PesoError(
                "--sequential", f"{self.sequential} is negative", "pass a value >= 0 (0: no order)"
            )
        if self.tokens not in TOKENS:
            raise PesoError("--tokens", f"unknown '{self.tokens}'", f"choose from {', '.join(TOKENS)}")


@dataclass
class World:
    """A generated log and its latent truth, before anything is written."""

    interactions: pl.DataFrame  # user, item, timestamp, block, evaluated (time order)
    truth_items: pl.DataFrame  # item, cluster, arrival_block, popularity
    truth_users: pl.DataFrame  # user, block, shifted, favourite (top genre of the long-term taste)
    truth_trends: pl.DataFrame  # block, item: each block's hot set (empty when trend_share is 0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def _tastes(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n random tastes: genre weights (n, K) and their latent vectors (n, dim)."""
    w = rng.dirichlet(np.full(len(centres), DIRICHLET), size=n)
    return w, w @ centres


def _next_hot(
    rng: np.random.Generator, hot: np.ndarray, n_avail: int, size: int, persistence: float
) -> np.ndarray:
    """The block's hot set: each of the last block's hot items stays with probability `persistence`, the rest
    are fresh uniform draws among the n_avail available items (so a trend is independent of taste)."""
    size = min(size, n_avail)
    keep = hot[rng.random(len(hot)) < persistence] if len(hot) else hot
    pool = np.setdiff1d(np.arange(n_avail), keep)
    return np.sort(np.concatenate([keep, rng.choice(pool, size=size - len(keep), replace=False)]))


def _mix(logits: np.ndarray, rows: np.ndarray, allowed: np.ndarray, seen: np.ndarray, taste: bool) -> None:
    """Replace the logits of `rows` by a pick restricted to `allowed` items (uniform over them, or the taste
    logits kept there if `taste`), in place; a row with no unseen allowed item keeps its taste logits."""
    if not len(rows):
        return
    alt = np.where(allowed, logits[rows] if taste else np.zeros((len(rows), logits.shape[1])), -np.inf)
    alt[seen] = -np.inf
    ok = np.isfinite(alt).any(axis=1)
    logits[rows[ok]] = alt[ok]


def generate(p: SimParams) -> World:
    """Draw the catalogue, the users and every block's sessions (no file is touched)."""
    p.check()
    rng = np.random.default_rng(p.seed)
    n_new = round(p.new_items_per_block * p.items)
    n_total = p.items + n_new * (p.blocks - 1)
    centres = _unit(rng.standard_normal((p.clusters, p.dim)))
    cluster = rng.integers(p.clusters, size=n_total)
    vec = _unit(centres[cluster] + ITEM_SPREAD * rng.standard_normal((n_total, p.dim)) / np.sqrt(p.dim))
    popularity = rng.normal(0.0, POPULARITY, size=n_total)
    arrival = np.concatenate([np.zeros(p.items, int), np.repeat(np.arange(1, p.blocks), n_new)])

    long_w, long_v = _tastes(rng, p.users, centres)
    _, short_v = _tastes(rng, p.users, centres)
    seen = np.zeros((p.users, n_total), dtype=bool)
    hot = np.zeros(0, dtype=np.int64)  # the block's trend items (drawn only when trend_share > 0)
    trends: list[tuple[int, np.ndarray]] = []
    prev = np.full(p.users, -1)  # last item of each user (across blocks): the sequential pull
    rows: list[np.ndarray] = []  # per pick: user, item, block, step
    truth_users = []
    for t in range(p.blocks):
        shifted = np.zeros(p.users, dtype=bool)
        if t > 0:
            shifted[rng.choice(p.users, size=round(p.shift_share * p.users), replace=False)] = True
            new_w, new_v = _tastes(rng, int(shifted.sum()), centres)
            long_w[shifted], long_v[shifted] = new_w, new_v
            _, fresh = _tastes(rng, p.users, centres)
            short_v = (1.0 - p.drift) * short_v + p.drift * fresh
        truth_users.append((t, shifted.copy(), long_w.argmax(1)))
        taste = TASTE_SCALE * (p.past_weight * long_v + (1.0 - p.past_weight) * short_v)
        n_avail = p.items + n_new * t
        mean = p.interactions_per_block * (p.base_factor if t == 0 else 1.0)
        # no user-item pair repeats (as after `peso prepare`'s dedupe), so a user cannot pick more than is left
        counts = np.minimum(rng.poisson(mean, size=p.users), n_avail - seen[:, :n_avail].sum(1))
        v = vec[:n_avail]
        if p.trend_share > 0:
            hot = _next_hot(rng, hot, n_avail, p.trend_items, p.trend_persistence)
            trends.append((t, hot))
        is_hot = np.isin(np.arange(n_avail), hot)
        fresh_share = p.new_item_share if t > 0 and n_new > 0 else 0.0
        is_fresh = np.arange(n_avail) >= n_avail - n_new  # the items arriving in this block (t > 0)
        for step in range(int(counts.max(initial=0))):
            act = np.flatnonzero(counts > step)
            logits = taste[act] @ v.T
            has_prev = prev[act] >= 0
            logits[has_prev] += p.sequential * (vec[prev[act[has_prev]]] @ v.T)
            logits = logits / p.temperature + popularity[:n_avail]
            logits[seen[act, :n_avail]] = -np.inf  # before the max: a seen item must not set the scale
            if p.trend_share > 0 or fresh_share > 0:  # no draw otherwise: the old parameters, the old world
                r = rng.random(len(act))
                trend = np.flatnonzero(r < p.trend_share)
                fresh = np.flatnonzero((r >= p.trend_share) & (r < p.trend_share + fresh_share))
                _mix(logits, trend, is_hot, seen[act[trend], :n_avail], taste=False)
                _mix(logits, fresh, is_fresh, seen[act[fresh], :n_avail], taste=True)
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            # softmax sample by inverse CDF (a third of Gumbel-max's cost); u in (0, total] never lands on
            # a zero-probability (seen) item
            cdf = np.cumsum(prob, axis=1)
            u = (1.0 - rng.random(len(act))) * cdf[:, -1]
            pick = (cdf < u[:, None]).sum(axis=1)
            seen[act, pick] = True
            prev[act] = pick
            rows.append(np.stack([act, pick, np.full(len(act), t), np.full(len(act), step)], axis=1))

    picks = np.concatenate(rows) if rows else np.zeros((0, 4), int)
    user, item, block, step = picks.T
    # times: each user's picks of a block are sorted uniform draws in the block's span, so step order = time
    # order; block 0 spans base_factor times as long (it holds that many more picks)
    span = np.where(block == 0, p.base_factor, 1.0) * BLOCK_SECONDS
    offset = np.where(block == 0, 0.0, (p.base_factor + block - 1) * BLOCK_SECONDS)
    raw = rng.random(len(picks))
    key = user.astype(np.int64) * p.blocks + block
    # both orders walk the same (user, block) runs, one by step, one by draw: the j-th pick gets the j-th draw
    draws = np.empty(len(picks))
    draws[np.lexsort((step, key))] = raw[np.lexsort((raw, key))]
    ts = (START + offset + draws * span).astype(np.int64)
    df = pl.DataFrame(
        {
            "user": np.char.add("u", np.char.zfill(user.astype(str), 5)),
            "item": np.char.add("i", np.char.zfill(item.astype(str), 6)),
            "timestamp": ts,
            "block": block.astype(np.int32),
            "_u": user,
            "_s": step,
        }
    )
    df = df.sort(["timestamp", "_u", "_s"]).drop("_u", "_s")  # ties: one user's picks keep their order
    df = df.with_columns((pl.len().over(["user", "block"]) >= MIN_ITEMS).alias("evaluated"))
    items = pl.DataFrame(
        {
            "item": [f"i{k:06d}" for k in range(n_total)],
            "cluster": cluster.astype(np.int32),
            "arrival_block": arrival.astype(np.int32),
            "popularity": popularity,
        }
    )
    users = pl.concat(
        [
            pl.DataFrame(
                {
                    "user": [f"u{k:05d}" for k in range(p.users)],
                    "block": np.full(p.users, t, np.int32),
                    "shifted": sh,
                    "favourite": fav.astype(np.int32),
                }
            )
            for t, sh, fav in truth_users
        ]
    )
    trend_df = pl.DataFrame(
        {
            "block": np.concatenate(
                [np.full(len(h), t, np.int32) for t, h in trends] or [np.zeros(0, np.int32)]
            ),
            "item": [f"i{k:06d}" for _, h in trends for k in h],
        },
        schema={"block": pl.Int32, "item": pl.String},
    )
    return World(df, items, users, trend_df)


def _stats(world: World, p: SimParams, name: str) -> dict:
    """stats.json as `peso prepare` writes it, plus the generator's parameters under "simulation"."""
    df = world.interactions
    per_block = block_stats(df)
    return {
        "name": name,
        "format": "simulated",
        "inputs": [],
        "settings": {"base_fraction": None, "blocks": p.blocks, "min_items": MIN_ITEMS, "kcore": None},
        "timestamps": "unix seconds",
        "read_interactions": df.height,
        "duplicates_dropped": 0,
        "kcore_dropped": 0,
        "interactions": df.height,
        "users": df["user"].n_unique(),
        "items": df["item"].n_unique(),
        "items_with_title": 0,
        "blocks": [b["block"] for b in per_block if b["evaluated_users"] > 0],
        "per_block": per_block,
        "index": p.tokens != "none",
        "simulation": {"generator": "peso.data.simulate", **asdict(p)},
    }


def _latent_index(world: World) -> dict[str, list[str]]:
    """<a_genre><b_n>: n numbers a genre's items in arrival order, so every item has its own ID."""
    ti = world.truth_items
    n = ti.select(pl.int_range(pl.len()).over("cluster").alias("n"))["n"].to_list()
    return {item: [f"<a_{c}>", f"<b_{k}>"] for item, c, k in zip(ti["item"], ti["cluster"], n, strict=True)}


def simulate(
    out: str | Path, params: SimParams | None = None, overwrite: bool = False, name: str | None = None
) -> dict:
    """Generate and write a DATA_DIR (atomically); returns its stats.json."""
    p = params or SimParams()
    out = Path(out)
    p.check()
    check_out(out, "data", overwrite)  # before the generation, which may take a while
    world = generate(p)
    stats = _stats(world, p, name or out.name)
    missing = [t for t in range(p.blocks) if t not in stats["blocks"]]
    if missing:
        raise PesoError(
            "--interactions-per-block",
            f"block(s) {missing} have no user with >= {MIN_ITEMS} items",
            "raise --interactions-per-block or --users",
        )
    used = world.interactions["item"].unique(maintain_order=True)
    items = pl.DataFrame({"item": used}).with_columns(
        pl.lit(None, pl.String).alias("title"), pl.lit(None, pl.String).alias("description")
    )
    with atomic_dir(out, kind="data") as tmp:
        world.interactions.write_parquet(tmp / INTERACTIONS)
        items.write_parquet(tmp / ITEMS)
        world.truth_items.write_parquet(tmp / "truth_items.parquet")
        world.truth_users.write_parquet(tmp / "truth_users.parquet")
        if p.trend_share > 0:  # only then: the old parameters write the old set of files
            world.truth_trends.write_parquet(tmp / "truth_trends.parquet")
        (tmp / STATS).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
        if p.tokens != "none":
            # `peso tokenize`'s own code, inside the temp folder: the index is renamed in with the rest
            from peso.tokenize.build import tokenize

            if p.tokens == "atomic":
                tokenize(tmp, "atomic", seed=p.seed)
            else:
                latent = tmp / ".latent_index.json"
                latent.write_text(json.dumps(_latent_index(world)), encoding="utf-8")
                tokenize(tmp, "import", index_file=str(latent), seed=p.seed)
                latent.unlink()
            assert (tmp / INDEX).is_file()
    return stats
