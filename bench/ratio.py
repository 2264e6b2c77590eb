"""Benchmark: Talon's turns/s against the floor, measured in one invocation so the machine's
drift falls on both: `bench/floor.py`'s measurement, then `bench/turns.py`'s, then the same
run of `bench/skeleton.py`'s stack (with `--stream post`; `--no-skeleton` skips it), then the
floor again; the ratio is Talon's turns/s over the mean of the two floors' turns/s (what two
cores allow the clients, functions-framework and the openai exchange with no Talon code), and
the skeleton's the same: what a stack of Talon's layout reaches with the contract's statements
and the least glue found (not a bound proved for every implementation). Beside it,
the same ratio in the floor's own terms (two cores over the CPU per turn of every process),
which other work on the machine does not move. Last, `bench/pg_floor.py`'s database floor
(the fewest durable statements a turn takes on Talon's schema: PostgreSQL's CPU and the
client's) added to the floor's CPU: the ratio a stack doing only the floor's work and those
statements would reach, so the share of the target left to Talon's own code is measured in the
same run (`--no-database-floor` skips it), and the same with `bench/pg_contract.py`'s floor
under Talon's contract (every statement's promise kept, the cheapest way found), driven by as
many clients as Talon's run over two pairs of connections. Both floors' client CPU is pg8000's
(the prescribed driver) sending their statements. The database floors are measured once,
after the rest, on one core's worth of work: the host's drift within the run falls on them
less evenly.

    .venv/bin/python bench/ratio.py --clients 16 --turns 2000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import turns
from floor import floor
from pg_contract import measure as measure_contract_floor
from pg_floor import measure as measure_database_floor


def main() -> int:
    parser = turns.parser()
    parser.description = __doc__
    parser.set_defaults(clients=16, turns=2000)
    parser.add_argument("--floor-turns", type=int, default=4000)
    parser.add_argument("--history", type=int, default=80, help="the floor's model history")
    parser.add_argument("--no-database-floor", dest="database_floor", action="store_false")
    parser.add_argument("--database-floor-turns", type=int, default=3000)
    parser.add_argument(
        "--no-skeleton", dest="skeleton", action="store_false",
        help="skip bench/skeleton.py's stack (run only with --stream post)",
    )  # fmt: skip
    args = parser.parse_args()
    args.skeleton = args.skeleton and args.stream == "post"

    # The floor's clients make the same requests per turn as Talon's (a held stream, which
    # the floor's app cannot hold, is measured against per-turn streams).
    stream = "post" if args.stream == "post" else "per-turn"

    def measure_floor() -> dict[str, object]:
        return floor(args.clients, args.floor_turns, args.client_processes, args.history,
                     stream)  # fmt: skip

    before = measure_floor()
    talon = turns.run(args)
    # The skeleton: the same run with the least glue found between the prescribed parts.
    skeleton = (
        turns.run(argparse.Namespace(**{**vars(args), "stack": "skeleton"}))
        if args.skeleton
        else None
    )
    after = measure_floor()
    floors = [float(f["ceiling_turns_per_second"]) for f in (before, after)]
    floor_tps = sum(floors) / len(floors)
    talon_tps = float(talon["turns_per_second"])
    # In the floor's own terms: the turns/s two cores allow Talon's stack at the CPU it
    # spent per turn (every process of the run), unaffected by other work on the machine.
    talon_cpu = sum(talon["cpu_ms_per_turn"].values())
    report = {
        "talon": talon,
        "floor_before": before,
        "floor_after": after,
        "floor_turns_per_second": round(floor_tps, 1),
        "talon_turns_per_second": talon_tps,
        "talon_over_floor": round(talon_tps / floor_tps, 3),
        "talon_cpu_ms_per_turn": round(talon_cpu, 2),
        "talon_ceiling_turns_per_second": round(2000 / talon_cpu, 1),
        "talon_ceiling_over_floor": round(2000 / talon_cpu / floor_tps, 3),
    }  # fmt: skip
    if skeleton is not None:
        skeleton_tps = float(skeleton["turns_per_second"])
        skeleton_cpu = sum(skeleton["cpu_ms_per_turn"].values())
        report.update({
            "skeleton": skeleton,
            "skeleton_turns_per_second": skeleton_tps,
            "skeleton_over_floor": round(skeleton_tps / floor_tps, 3),
            "skeleton_cpu_ms_per_turn": round(skeleton_cpu, 2),
            "skeleton_ceiling_over_floor": round(2000 / skeleton_cpu / floor_tps, 3),
            "talon_over_skeleton": round(talon_tps / skeleton_tps, 3),
            "talon_cpu_ms_per_turn_above_skeleton": round(talon_cpu - skeleton_cpu, 2),
        })  # fmt: skip
    if args.database_floor:
        report.update(with_database_floor(args, floor_tps, talon_cpu))
    print(json.dumps(report, indent=2))
    return 0


def with_database_floor(
    args: argparse.Namespace, floor_tps: float, talon_cpu: float
) -> dict[str, object]:
    """The floor plus the database's: what durability costs at the least, in the ratio's terms,
    and what durability and Talon's contract cost at the least."""
    push = args.broker == "pubsub"
    database = measure_database_floor(args.database_floor_turns, "push" if push else "turn")
    # As many sessions as Talon's run, over two pairs of connections: fewer backends cost
    # PostgreSQL less than a pair per session (Talon's pools open what their load needs).
    contract = measure_contract_floor(args.database_floor_turns, push, args.clients,
                                      connections=2)  # fmt: skip
    report: dict[str, object] = {"database_floor": database, "contract_floor": contract}
    for name, measured in (("database", database), ("contract", contract)):
        database_cpu = float(measured["postgres_cpu_ms_per_turn"]) + float(
            measured["client_cpu_ms_per_turn"]
        )
        combined_cpu = 2000 / floor_tps + database_cpu
        report.update({
            f"floor_with_{name}_cpu_ms_per_turn": round(combined_cpu, 2),
            # The ratio a stack doing nothing beyond the floor and these statements would
            # reach; 0.6 of the floor leaves Talon's own code the difference in CPU.
            f"floor_with_{name}_over_floor": round(2000 / combined_cpu / floor_tps, 3),
            f"talon_cpu_ms_per_turn_above_floor_with_{name}": round(talon_cpu - combined_cpu, 2),
        })  # fmt: skip
    report["cpu_ms_per_turn_at_0_6_of_floor"] = round(2000 / (0.6 * floor_tps), 2)
    return report


if __name__ == "__main__":
    sys.exit(main())
