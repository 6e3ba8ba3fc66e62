"""A protocol simulation of the failure detector at any size: `simulate(Scenario) -> Outcome`,
and `python -m sim.detector --droplets 100 --seconds 120 --loss 0.01 --crashes 5 --pauses 5
--json`. N agents run the detector's real pure code on a simulated clock and network
(`sim.detector_mesh`); the same scenario, seed included, gives the same outcome.

Not simulated: JetStream and its elections (a record is written one round trip after the
decision), the NATS servers themselves (a crashed droplet's server, reconnections), holds,
two-droplet meshes (the provider's second opinion), CPU time and event-loop lag.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sim.detector_mesh import SETTLE_S, Fault, Kind, Mesh, Scenario, names

__all__ = ["Outcome", "Scenario", "percentile", "simulate"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run showed; times in seconds of the simulated clock, rates per simulated second
    (a droplet's up to its crash). A decision is a majority of a droplet's monitors confirming
    it, counted by any agent; `busiest` is the agent that receives the most (master, which
    watches everyone)."""

    droplets: int
    simulated_s: float
    detection_s: tuple[float, ...]  # crash to the first decision, per crash confirmed
    detection_p50_s: float | None
    detection_p99_s: float | None
    silence_s: tuple[float, ...]  # from the last beat of each droplet confirmed dead
    undetected: int  # crashes without a decision by the end
    cut_confirmed: int  # of the droplets cut off from everyone
    false_confirmations: int  # decisions about droplets neither crashed nor cut off
    crashed: tuple[str, ...]
    paused: tuple[str, ...]
    confirmed: tuple[str, ...]  # droplets with a failure record, in the order written
    record_attempts: int  # KV creates of failure records: each monitor counting a majority tries
    votes_sent: int  # vote deliveries (one per receiver): to the target's monitors and itself
    suspicions: int
    refutations: int
    sent_per_droplet_s: float
    received_per_droplet_s: float
    busiest: str
    busiest_sent_per_s: float
    busiest_received_per_s: float


def plan_faults(scenario: Scenario, rng: random.Random) -> list[Fault]:
    """Distinct droplets for each fault, at uniform times between the warm-up and the end."""
    kinds = (
        [Kind.CRASH] * scenario.crashes
        + [Kind.PAUSE] * scenario.pauses
        + [Kind.CUT] * scenario.partitions
    )
    chosen = rng.sample(names(scenario.droplets), len(kinds))
    last = scenario.seconds - SETTLE_S
    faults = [
        Fault(k, d, rng.uniform(scenario.warmup_s, last))
        for k, d in zip(kinds, chosen, strict=True)
    ]
    return sorted(faults, key=lambda f: f.at)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: with 20 values, p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summary(mesh: Mesh, faults: Sequence[Fault]) -> Outcome:
    """The outcome of a finished run: detections, mistakes and the work per agent."""
    seconds = mesh.scenario.seconds
    decided = mesh.first_decision
    agents = list(mesh.agents.values())
    began = {f.droplet: f.at for f in faults if f.kind is not Kind.PAUSE}
    crashes = [f for f in faults if f.kind is Kind.CRASH]
    ended = [f for f in faults if f.kind is not Kind.PAUSE and decided.get(f.droplet, -1) >= f.at]
    detection = [decided[f.droplet] - f.at for f in ended if f.kind is Kind.CRASH]
    silences = [decided[f.droplet] - mesh.agents[f.droplet].silent_from for f in ended]
    false = [d for d, t in decided.items() if d not in began or t < began[d]]
    up = {a.name: min(seconds, a.gone_at) for a in agents}
    busiest = max(agents, key=lambda a: a.received / up[a.name])
    return Outcome(
        droplets=len(agents),
        simulated_s=seconds,
        detection_s=tuple(round(d, 3) for d in detection),
        detection_p50_s=rounded(percentile(detection, 0.5)),
        detection_p99_s=rounded(percentile(detection, 0.99)),
        silence_s=tuple(round(s, 3) for s in silences),
        undetected=len(crashes) - len(detection),
        cut_confirmed=sum(f.kind is Kind.CUT for f in ended),
        false_confirmations=len(false),
        record_attempts=mesh.record_attempts,
        votes_sent=mesh.votes_sent,
        crashed=tuple(f.droplet for f in crashes),
        paused=tuple(f.droplet for f in faults if f.kind is Kind.PAUSE),
        confirmed=tuple(mesh.records),
        suspicions=mesh.suspicions,
        refutations=mesh.refutations,
        sent_per_droplet_s=sum(a.sent for a in agents) / sum(up.values()),
        received_per_droplet_s=sum(a.received for a in agents) / sum(up.values()),
        busiest=busiest.name,
        busiest_sent_per_s=busiest.sent / up[busiest.name],
        busiest_received_per_s=busiest.received / up[busiest.name],
    )


def simulate(scenario: Scenario) -> Outcome:
    mesh = Mesh(scenario)
    faults = plan_faults(scenario, mesh.rng)
    mesh.start(faults)
    mesh.run()
    return summary(mesh, faults)


def parse(argv: Sequence[str] | None) -> tuple[Scenario, bool]:
    parser = argparse.ArgumentParser(prog="python -m sim.detector", description=__doc__)
    parser.add_argument("--droplets", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--loss", type=float, default=0.0, help="share of messages lost")
    parser.add_argument(
        "--delay", type=float, nargs=2, default=(0.0005, 0.005), metavar=("MIN_S", "MAX_S")
    )
    parser.add_argument("--crashes", type=int, default=0)
    parser.add_argument("--pauses", type=int, default=0)
    parser.add_argument("--pause-s", type=float, default=2.0)
    parser.add_argument("--partitions", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    scenario = Scenario(
        droplets=args.droplets,
        seconds=args.seconds,
        loss=args.loss,
        delay_s=(args.delay[0], args.delay[1]),
        crashes=args.crashes,
        pauses=args.pauses,
        pause_s=args.pause_s,
        partitions=args.partitions,
        seed=args.seed,
    )
    return scenario, args.json


def main(argv: Sequence[str] | None = None) -> int:
    try:
        scenario, as_json = parse(argv)
    except ValueError as err:
        print(f"sim.detector: {err}", file=sys.stderr)
        return 2
    found = asdict(simulate(scenario))
    if as_json:
        print(json.dumps(found))
    else:
        for key, value in found.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
