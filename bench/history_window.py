"""Benchmark: a worker's CPU per claim for the history window from its copy
(`runtime/history_cache.py`) and its chat form (`runtime/context.chat_history`), in a session
of one-message turns whose window holds the last 40 turns (80 messages): each claim adds the
previous answer and the new input and drops the two oldest, as in `bench/turns.py`.

    .venv/bin/python bench/history_window.py --claims 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from talon.runtime import context
from talon.runtime.history_cache import HistoryCache
from talon.sessions.messages import WindowSince

WINDOW_TURNS = 40


def _message(seq: int) -> tuple[int, int, dict[str, Any]]:
    role = "user" if seq % 2 else "assistant"
    content = f"message {seq}"
    return (seq, (seq + 1) // 2, {"role": role, "content": content,
                                  "tool_calls": None, "tool_call_id": None})  # fmt: skip


def _since(last: int, after: int) -> WindowSince:
    """The read of a claim whose input is message `last`, for a copy up to `after`."""
    first_turn = max(1, (last + 1) // 2 - WINDOW_TURNS + 1)
    lo = 2 * first_turn - 1
    return WindowSince(
        (last + 1) // 2,
        first_turn - 1,
        lo,
        last,
        [_message(s) for s in range(max(after, lo - 1) + 1, last + 1)],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--claims", type=int, default=20000)
    args = parser.parse_args()
    copies, session = HistoryCache(), uuid.uuid4()
    last = 2 * WINDOW_TURNS + 1  # a full window, then one turn per claim
    copies.window(session, _since(last, 0), 0)
    started = time.process_time()
    for _ in range(args.claims):
        after, last = last, last + 2
        rows = copies.window(session, _since(last, after), after)
        assert rows is not None and len(rows) == 2 * WINDOW_TURNS - 1
        context.chat_history(rows)
    cpu = time.process_time() - started
    figures = {"claims": args.claims, "window_messages": 2 * WINDOW_TURNS - 1,
               "cpu_us_per_claim": round(cpu * 1e6 / args.claims, 1)}  # fmt: skip
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
