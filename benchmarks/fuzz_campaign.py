"""Fuzz campaign: the property tests of tests/fuzz with random seeds and many more cases.

In `make test` every property runs a fixed, derandomized set of cases. This script runs the
same tests in rounds, each with a fresh random seed and `--scale` times as many cases
(RAGKV_TEST_FUZZ_SCALE), until `--minutes` are spent. It prints a row per round, the
falsifying example of every failure (hypothesis prints it with the seed to replay), and
writes benchmarks/results/fuzz_campaign.json. Not a test: what it finds becomes one.

    python benchmarks/fuzz_campaign.py                      # 5 minutes, 20x the cases
    python benchmarks/fuzz_campaign.py --minutes 30 --scale 50
    python benchmarks/fuzz_campaign.py --server             # + the HTTP stateful run (slow)
    python benchmarks/fuzz_campaign.py --seed 1234 -k radix # replay one round, some tests

A failure found with seed S replays with:
    RAGKV_TEST_FUZZ_SCALE=<scale> python -m pytest tests/fuzz --hypothesis-seed=S
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fuzz_campaign.json"
PROPERTY_TESTS = ["tests/fuzz"]
SERVER_TESTS = ["tests/server/test_schema_stateful.py"]
ROUND_MIN_S = 900.0  # a round started before the deadline may run this long


def run_round(paths: list[str], seed: int, scale: int, keyword: str | None, timeout_s: float):
    """One pytest run of `paths` with `seed`; returns the round's summary."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   f"--hypothesis-seed={seed}", f"--junitxml={report}", *paths]  # fmt: skip
        if keyword:
            command += ["-k", keyword]
        env = {**os.environ, "RAGKV_TEST_FUZZ_SCALE": str(scale)}
        started = time.monotonic()
        try:
            subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace")[-2000:]
            return {"seed": seed, "timed_out": True, "seconds": round(timeout_s, 1),
                    "output_tail": output}  # fmt: skip
        seconds = time.monotonic() - started
        return {"seed": seed, "seconds": round(seconds, 1), **read_report(report)}


def read_report(report: Path) -> dict[str, Any]:
    """Tests passed, and each failure with its message, from a JUnit XML report."""
    if not report.is_file():
        return {"passed": 0, "failures": [{"test": "(collection)", "message": "no report"}]}
    passed, failures = 0, []
    for case in ElementTree.parse(report).iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is None:
            passed += case.find("skipped") is None
            continue
        name = f"{case.get('classname')}::{case.get('name')}"
        failures.append({"test": name, "message": (problem.text or "")[-4000:]})
    return {"passed": passed, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget")
    parser.add_argument("--scale", type=int, default=20, help="times the CI cases per test")
    parser.add_argument("--seed", type=int, help="run one round with this seed")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--server", action="store_true", help="add the HTTP stateful run")
    args = parser.parse_args()
    paths = PROPERTY_TESTS + (SERVER_TESTS if args.server else [])
    deadline = time.monotonic() + args.minutes * 60
    console = Console()
    table = Table(title=f"fuzz campaign, {args.scale}x the CI cases")
    for column in ("round", "seed", "passed", "failed", "seconds"):
        table.add_column(column, justify="right")
    rounds: list[dict[str, Any]] = []
    while not rounds or (args.seed is None and time.monotonic() < deadline):
        seed = args.seed if args.seed is not None else random.randrange(2**32)
        left_s = max(deadline - time.monotonic(), ROUND_MIN_S)  # a round runs to its end
        result = run_round(paths, seed, args.scale, args.keyword, left_s)
        rounds.append(result)
        failed = "timed out" if result.get("timed_out") else str(len(result["failures"]))
        row = (str(len(rounds)), str(seed), str(result.get("passed", "-")), failed)
        table.add_row(*row, str(result["seconds"]))
        for failure in result.get("failures", []):
            console.print(f"[red]FAILED[/red] {failure['test']} (seed {seed})")
            console.print(failure["message"], markup=False, highlight=False)
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": platform.node(),
        "python": platform.python_version(),
        "scale": args.scale,
        "paths": paths,
        "rounds": rounds,
        "failing_rounds": sum(bool(r.get("failures") or r.get("timed_out")) for r in rounds),
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
