"""``qkdops replay``: re-run post-processing on archived blocks and check it reproduces the results.

Post-processing is a deterministic function of the block (its counts and its seed), the link's
nominal parameters and post-processing settings and the previous block's QBER
(``qkdops.runtime.pipeline``), so replaying the archive must give the recorded outcome, key length,
bounds, error-correction figures and — for the bits engine — both ends' key fingerprints (SHA-256)
for every block: a check that the archive and the pipeline can be trusted after a crash, an upgrade
or an incident. The keys are rebuilt in memory to be fingerprinted, never printed nor written.
Exit status 1 if any block differs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from qkdops.config import DEFAULT_CONFIG, load_config
from qkdops.runtime.archive import BlockArchive
from qkdops.runtime.fleet import previous_qber
from qkdops.runtime.pipeline import BlockResult, PostProcessor, replay_channel
from qkdops.runtime.tracing import make_tracer
from qkdlink.protocols.base import ParameterError
from qkdlink.emulator import Link


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run post-processing on archived blocks and compare",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml (default: the shipped one)")
    p.add_argument("--link", help="only this link")
    p.add_argument("--from", dest="first", type=int, default=0, help="first block index")
    p.add_argument("--to", dest="last", type=int, default=None, help="last block index")
    p.add_argument("--json", action="store_true", help="one JSON object per block")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    specs = [s for s in config.links if args.link in (None, s.id)]
    if not specs:
        raise ParameterError(f"--link: no link '{args.link}' in {config.source}")
    path = config.runtime.state_dir / "blocks.sqlite"
    if not path.exists():
        raise ParameterError(f"no block archive at {path} (has `qkdops up` run with {config.source}?)")
    archive = BlockArchive(path)
    tracer, shutdown = make_tracer("none")
    checked = differ = missing = 0
    try:
        for spec in specs:
            nominal = Link(spec.emulator_config(1)).nominal
            processor = PostProcessor(spec.id, spec.protocol, nominal, tracer, spec.postprocessing)
            prev = previous_qber(archive, spec.id, args.first)
            for block in archive.blocks(spec.id, args.first, args.last):
                recorded_body = archive.result(spec.id, block.index)
                recorded = BlockResult.from_json(recorded_body) if recorded_body else None
                failed_after = recorded.channel_failed_after if recorded is not None else None
                replayed = processor.process(block, prev, channel_up=replay_channel(failed_after))[0].result
                if replayed.qber_for_next_block is not None:
                    prev = replayed.qber_for_next_block
                same = recorded is not None and _same(recorded, replayed)
                checked += 1
                missing += recorded is None
                differ += recorded is not None and not same
                _print(args.json, spec.id, block.index, replayed, recorded, same)
    finally:
        shutdown()
        archive.close()
    print(f"# {checked} blocks replayed: {checked - differ - missing} identical, {differ} differ, "
          f"{missing} without a recorded result")
    return 1 if differ else 0


def _same(a: BlockResult, b: BlockResult) -> bool:
    """Equal outcome and key length; floats equal to 1e-12 relative (summation order is fixed)."""
    for name, x in a.__dict__.items():
        y = getattr(b, name)
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0):
                return False
        elif x != y:
            return False
    return True


def _print(as_json: bool, link: str, index: int, replayed: BlockResult, recorded: BlockResult | None, same: bool) -> None:
    status = "missing" if recorded is None else ("identical" if same else "DIFFERS")
    if as_json:
        print(json.dumps({"link": link, "block": index, "status": status, "reason": replayed.reason,
                          "secret_key_bits": replayed.secret_key_bits, "key_sha256": replayed.key_sha256,
                          "recorded_secret_key_bits": None if recorded is None else recorded.secret_key_bits,
                          "recorded_key_sha256": None if recorded is None else recorded.key_sha256}))
    else:
        fingerprint = (replayed.key_sha256 or "-")[:16]
        print(f"{link:<20} {index:>6} {replayed.reason:<18} {replayed.secret_key_bits:>12d}  {fingerprint:<16}  {status}")
