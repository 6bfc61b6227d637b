"""How long `qkdops history` takes: D days of the shipped fleet, or of N links cloned from it, backfilled.

    python bench/bench_history.py --days 30                 # the shipped three links
    python bench/bench_history.py --days 30 --links 100     # 100 links cloned from them (model engine)

Runs the real command in a fresh state dir (its own ports and temp dir) and prints a Markdown row:
emulation and rule-evaluation wall time, samples written, blocks, the data dir's size, and emulated
days per wall-clock minute. docs/benchmarks.md keeps the results. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from qkdops.config import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parent.parent
SITES = 20   # as bench_workers.py: 20 sites, each link between two of them


def fleet(directory: Path, links: int) -> Path:
    """The shipped fleet (``links`` 0) or ``links`` links cloned from its three, each with its own seed and sites."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["runtime"]["state_dir"] = str(directory / "state")
    if links:
        templates = raw["links"]
        raw["links"] = [{**templates[i % len(templates)], "id": f"l{i:04d}", "seed": 1000 + i,
                         "sites": {**templates[i % len(templates)]["sites"], "alice": f"s{2 * i % SITES:02d}",
                                   "bob": f"s{(2 * i + 1) % SITES:02d}"}}
                        for i in range(links)]
        raw.pop("key_delivery", None)   # each site a KME at the default ports (none is started: history delivers no keys)
    path = directory / "links.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--links", type=int, default=0, help="clone this many links from the shipped three (0: the shipped fleet)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkdops-bench-history-") as tmp:
        directory = Path(tmp)
        config = fleet(directory, args.links)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "history", "--days", f"{args.days:g}", "--fleet", str(config)],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"qkdops history failed ({done.returncode}): {done.stderr[-2000:]}")
        summary = done.stdout.strip().splitlines()[-1]
        numbers = re.search(r"([\d,]+) exporter samples in (\d+) s, ([\d,]+) rule samples \(.*\) in (\d+) s; (\d+) block", summary)
        assert numbers, summary
        raw, emulation, rules, rules_s, blocks = numbers.groups()
        links = args.links or len(yaml.safe_load(config.read_text())["links"])
        print(f"{summary}\n")
        print("| days | links | emulation (s) | rules (s) | total wall (s) | exporter samples | rule samples | blocks "
              "| data dir (MiB) | emulated days per minute |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {args.days:g} | {links} | {emulation} | {rules_s} | {wall:.0f} | {raw} | {rules} | {blocks} "
              f"| {size_mib(directory / 'state' / 'prometheus'):.0f} | {args.days / (wall / 60):.2f} |")


if __name__ == "__main__":
    main()
