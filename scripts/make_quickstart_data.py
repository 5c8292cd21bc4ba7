"""Build the embedded quickstart data: MovieLens-100k cut into chronological blocks in the PESO release format.

Blocks by global time, as the paper's release: the first 60% of interactions form block 0, the rest four
equal slices. Per block, a user appears if they have at least 3 items in it; `previous_block` holds all their
items from earlier blocks. Items get one token each ("<i_ID>", the atomic tokenization), since MovieLens has
no released semantic-ID index.

    python scripts/make_quickstart_data.py ../shared/data/ml-100k_recbole/ml-100k.inter data/quickstart/ml-100k
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path


def main(inter: str, out: str, base_fraction: float = 0.6, blocks: int = 5, min_items: int = 3) -> None:
    with open(inter, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        col = {name.split(":")[0]: i for i, name in enumerate(header)}
        rows = [
            (float(r[col["timestamp"]]), k, r[col["user_id"]], r[col["item_id"]])
            for k, r in enumerate(reader)
        ]
    rows.sort()  # by time, file order among equal timestamps
    seen, events = set(), []
    for _, _, user, item in rows:  # a repeated user-item pair keeps its first time
        if (user, item) not in seen:
            seen.add((user, item))
            events.append((user, item))
    n = len(events)
    cut = [0, round(base_fraction * n)]
    rest = n - cut[1]
    cut += [cut[1] + round(rest * k / (blocks - 1)) for k in range(1, blocks)]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    history: dict[str, list[str]] = defaultdict(list)
    for t in range(blocks):
        current: dict[str, list[str]] = defaultdict(list)
        for user, item in events[cut[t] : cut[t + 1]]:
            current[user].append(item)
        block = {
            u: {"previous_block": list(history[u]), "current_block": items}
            for u, items in current.items()
            if len(items) >= min_items
        }
        with gzip.open(out_dir / f"ml-100k.all.block_{t}.json.gz", "wt") as f:
            json.dump(block, f, separators=(",", ":"))
        print(f"block {t}: {cut[t + 1] - cut[t]} interactions, {len(block)} users with >= {min_items} items")
        for user, items in current.items():
            history[user].extend(items)
    items = sorted({i for _, i in events}, key=int)
    with gzip.open(out_dir / "ml-100k.index.atomic.json.gz", "wt") as f:
        json.dump({i: [f"<i_{i}>"] for i in items}, f, separators=(",", ":"))
    print(f"{len(items)} items")


if __name__ == "__main__":
    main(*sys.argv[1:3])
