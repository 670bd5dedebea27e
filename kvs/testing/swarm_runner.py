"""The swarm's command line (`python scripts/sim.py`): draw fresh seeds for a while, run each,
print the failing ones with the command that replays them; or replay one seed.

    python scripts/sim.py swarm --seconds S [--nodes N] [--reference]
    python scripts/sim.py replay SEED

A seed says everything about its run, the options included: `--nodes` and `--reference` are
folded into the seed's high bits (`compose_seed`), so `replay SEED` needs nothing else.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Callable

from kvs.testing.swarm import Outcome, run_seed

__all__ = ["compose_seed", "decompose_seed", "main", "swarm"]

_RANDOM_BITS = 48
_NODES_SHIFT = 48  # 4 bits: 0 = drawn by the seed
_REFERENCE_BIT = 1 << 52


def compose_seed(raw: int, *, nodes: int | None = None, reference: bool = False) -> int:
    seed = raw & ((1 << _RANDOM_BITS) - 1)
    if nodes:
        seed |= nodes << _NODES_SHIFT
    if reference:
        seed |= _REFERENCE_BIT
    return seed


def decompose_seed(seed: int) -> tuple[int | None, bool]:
    """(nodes override, reference) encoded in `seed`."""
    nodes = (seed >> _NODES_SHIFT) & 0xF
    return (nodes or None), bool(seed & _REFERENCE_BIT)


def run_composed(seed: int) -> Outcome:
    nodes, reference = decompose_seed(seed)
    return run_seed(seed, nodes=nodes, reference=reference)


def replay_command(seed: int) -> str:
    return f"python scripts/sim.py replay {seed}"


def swarm(
    seconds: float,
    *,
    nodes: int | None = None,
    reference: bool = False,
    max_seeds: int | None = None,
    out: Callable[[str], None] = print,
    source: random.Random | None = None,
) -> list[Outcome]:
    """Run fresh seeds until `seconds` of wall time are used (at least one seed)."""
    source = source or random.SystemRandom()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    while not outcomes or time.monotonic() - started < seconds:
        if max_seeds is not None and len(outcomes) >= max_seeds:
            break
        seed = compose_seed(source.getrandbits(_RANDOM_BITS), nodes=nodes, reference=reference)
        outcome = run_composed(seed)
        outcomes.append(outcome)
        if not outcome.ok:
            out(
                f"FAIL seed {seed} ({outcome.plan.describe()}): {outcome.violations[0]}"
                f" -- replay: {replay_command(seed)}"
            )
    wall = time.monotonic() - started
    simulated = sum(o.simulated for o in outcomes)
    failures = sum(not o.ok for o in outcomes)
    out(
        f"swarm: {len(outcomes)} seeds, {failures} failures, simulated {simulated:.0f} s in"
        f" {wall:.1f} s wall ({simulated / wall if wall else 0:.1f}× real time)"
    )
    return outcomes


def replay(seed: int, out: Callable[[str], None] = print) -> Outcome:
    outcome = run_composed(seed)
    out(f"seed {seed}: {outcome.plan.describe()}")
    for fault in outcome.plan.faults:
        out(f"  fault {fault.kind} at +{fault.at:.2f} s for {fault.length:.2f} s {fault.nodes}")
    for violation in outcome.violations:
        out(f"  VIOLATION {violation}")
    out(
        f"{'FAIL' if outcome.violations else 'ok'}: {outcome.summary}; simulated"
        f" {outcome.simulated:.0f} s in {outcome.wall:.1f} s wall"
        f" ({outcome.simulated / outcome.wall if outcome.wall else 0:.1f}× real time)"
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sim.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("swarm", help="run fresh random seeds for a while")
    run.add_argument("--seconds", type=float, required=True, help="wall-clock budget")
    run.add_argument("--nodes", type=int, choices=range(1, 16), help="cluster size (else drawn)")
    run.add_argument(
        "--reference",
        action="store_true",
        help="only the reference scenario: 5 nodes, shipped timers, 20 ops/s, faults on",
    )
    again = commands.add_parser("replay", help="run one seed again, exactly")
    again.add_argument("seed", type=int)
    for command in (run, again):
        command.add_argument(
            "--log-level", default="CRITICAL", help="the nodes' log level (default: CRITICAL)"
        )
    args = parser.parse_args(argv)
    # The nodes log what the faults do to them (disk errors, dead members): not findings.
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    if args.command == "replay":
        return 0 if replay(args.seed).ok else 1
    outcomes = swarm(args.seconds, nodes=args.nodes, reference=args.reference)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
