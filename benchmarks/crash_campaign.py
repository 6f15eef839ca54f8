"""SIGKILL campaign, full count (issue 16): a real `ragkv serve` is killed with SIGKILL at
seeded random points, 20 times during each of (a) document ingest over HTTP, (b) semantic
cache writes, (c) chunk-KV disk writes, (d) a collection delete, restarted on the same data
directory each time and checked: every acknowledged write there, nothing half-written
visible, the restart within 3x the first start + 10 s. Not a test (make test runs a reduced
count, tests/reliability/test_sigkill.py, through the same code: tests/reliability/); prints
a table and writes `results/crash_campaign.json`.

    python benchmarks/crash_campaign.py                      # bundled SmolLM2, 4 x 20 kills
    python benchmarks/crash_campaign.py --kills 2 --small    # smoke: the 2-layer test model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the campaign lives with the tests that run it reduced

from tests.reliability.campaign import SCENARIOS, CampaignResult, run_campaign  # noqa: E402
from tests.reliability.serve import build_small_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "crash_campaign.json"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills per scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list")
    p.add_argument("--together", action="store_true",
                   help="load every scenario at once (each kill counts for all)")  # fmt: skip
    p.add_argument("--small", action="store_true",
                   help="serve the 2-layer random test model instead of SmolLM2")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def write(args: argparse.Namespace, result: CampaignResult, complete: bool) -> None:
    """The JSON report; written after every kill too (`complete` false), so that a run cut
    short keeps its figures."""
    report = {
        "benchmark": "crash_campaign",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": "small random 2-layer Llama" if args.small else "SmolLM2-135M-Instruct Q4_1",
        "kills_per_scenario": args.kills,
        "seed": args.seed,
        "together": args.together,
        "server_threads": args.threads,
        "complete": complete,
        **result.to_json(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    """Run the campaign, print the table, write the JSON; exit 1 on any violation."""
    args = parse_args()
    logging.getLogger("ragkv").setLevel(logging.ERROR)  # index rebuilds after each kill
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.0f} s] {line[:300]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ragkv-crash-") as scratch:
        root = args.keep or Path(scratch)
        model_dir = build_small_model(root / "small-model") if args.small else None
        result = run_campaign(
            root / "campaign",
            args.kills,
            args.seed,
            model_dir,
            tuple(args.scenarios.split(",")),
            together=args.together,
            threads=args.threads,
            log=log,
            progress=lambda partial: write(args, partial, complete=False),
        )
    print(result.table())
    for scenario in result.scenarios:
        for violation in scenario.tally.violations:
            print(f"VIOLATION {scenario.name}: {violation}")
    write(args, result, complete=True)
    print(f"wrote {args.out}")
    clean = not result.final_violations and not any(s.tally.violations for s in result.scenarios)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
