"""How many torch threads a run should use: the quickstart at 1 epoch per block, methods [single], with
`threads` auto / 1 / 2 (2 = torch's own default on this machine), alone and beside one busy process (a
`while True: pass` loop, as another job on the machine would be). Each point is the wall time of the whole
`peso run`; the slowdown is beside / alone. Run it on an otherwise idle machine.

    python benchmarks/threads.py --json benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peso.io import write_text

ROOT = Path(__file__).resolve().parents[1]
SETS = ["train.epochs=1", "train.continual_epochs=1", "methods=[single]"]


def timed_run(threads: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "peso.cli", "run", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    cmd += ["--out", str(out)] + [a for s in [*SETS, f"threads={threads}"] for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the setting alone decides
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", nargs="+", default=["auto", "1", "2"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            alone = timed_run(threads, Path(tmp) / f"alone-{threads}")
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                beside = timed_run(threads, Path(tmp) / f"beside-{threads}")
            finally:
                busy.kill()
                busy.wait()
            points.append(
                {
                    "threads": threads,
                    "alone_s": round(alone, 1),
                    "beside_busy_s": round(beside, 1),
                    "slowdown": round(beside / alone, 2),
                }
            )
            print(
                f"threads {threads:>4}: alone {alone:6.1f} s, beside a busy process {beside:6.1f} s "
                f"({beside / alone:.2f}x)"
            )
    result = {"cores": os.cpu_count(), "runs": points, "command": "benchmarks/threads.py", "sets": SETS}
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
