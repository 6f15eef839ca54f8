"""The SIGKILL campaign (issue 16): a real `ragkv serve` under a write load is killed with
SIGKILL at seeded random points, restarted on the same data directory, and checked.

A kill point: the load's k-th critical write (k drawn from 2..4) plus a delay drawn uniformly
within the duration of the shortest earlier one, so the kill lands anywhere in a write, from
its first byte sent to its answer (or, for a write quicker than all before it, just after).
`tests/reliability/test_sigkill.py` runs a reduced count; `benchmarks/crash_campaign.py` the
full one.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragkv.assets import generation_model_path
from tests.reliability.integrity import Inspector
from tests.reliability.load import Api, LoadRun, Op
from tests.reliability.scenarios import (
    ChunkKVScenario,
    DeleteScenario,
    IngestScenario,
    Scenario,
    SemanticScenario,
    Tally,
)
from tests.reliability.serve import ServeProcess

SCENARIOS: dict[str, type[Scenario]] = {
    "ingest": IngestScenario,
    "semantic": SemanticScenario,
    "chunk_kv": ChunkKVScenario,
    "delete": DeleteScenario,
}
STARTUP_FACTOR = 3.0  # a restart may take this times the baseline start, plus STARTUP_SLACK_S
STARTUP_SLACK_S = 10.0


@dataclass
class ScenarioResult:
    """One scenario's kills and what the checks after them found."""

    name: str
    kills: int = 0
    tally: Tally = field(default_factory=Tally)
    startup_s: list[float] = field(default_factory=list)
    kill_after_ms: list[float] = field(default_factory=list)  # into its critical write
    kills_in_write: int = 0  # of those led here: the write got no answer

    def add(self, plan: Round, tally: Tally) -> None:
        """Count one kill of a round this scenario was loaded in."""
        self.kills += 1
        self.tally.add(tally)
        self.startup_s.append(plan.startup_s)
        if plan.lead.name == self.name and plan.target is not None:
            self.kill_after_ms.append(plan.target.killed_after_s * 1000)
            self.kills_in_write += plan.target.in_flight

    def row(self) -> dict[str, Any]:
        """The figures of the table and the JSON."""
        return {
            "scenario": self.name,
            "kills": self.kills,
            "kills_in_write": self.kills_in_write,
            "acknowledged": self.tally.acknowledged,
            "verified": self.tally.verified,
            "in_flight": self.tally.in_flight,
            "in_flight_applied": self.tally.applied,
            "violations": len(self.tally.violations),
            "startup_p50_s": round(statistics.median(self.startup_s), 2) if self.startup_s else 0,
            "startup_max_s": round(max(self.startup_s), 2) if self.startup_s else 0,
        }


@dataclass
class CampaignResult:
    """Every scenario's result, the baseline start (a clean restart after the setup: the
    usual time), and checks of the final clean stop."""

    baseline_startup_s: float
    scenarios: list[ScenarioResult]
    final_violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def startup_bound_s(self) -> float:
        """The slowest restart allowed: the usual start, generously."""
        return STARTUP_FACTOR * self.baseline_startup_s + STARTUP_SLACK_S

    def table(self) -> str:
        """A plain-text table, one row per scenario."""
        rows = [scenario.row() for scenario in self.scenarios]
        header = list(rows[0]) if rows else []
        lines = [" | ".join(header), " | ".join("---" for _ in header)]
        lines += [" | ".join(str(row[name]) for name in header) for row in rows]
        lines.append(
            f"baseline start {self.baseline_startup_s:.2f} s; restart bound "
            f"{self.startup_bound_s:.1f} s; final clean stop: "
            f"{len(self.final_violations)} violations; wall {self.wall_s:.0f} s"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Figures, violations and raw timings."""
        return {
            "baseline_startup_s": round(self.baseline_startup_s, 2),
            "startup_bound_s": round(self.startup_bound_s, 2),
            "rows": [scenario.row() for scenario in self.scenarios],
            "violations": {s.name: s.tally.violations for s in self.scenarios},
            "final_violations": self.final_violations,
            "startup_s": {s.name: [round(t, 2) for t in s.startup_s] for s in self.scenarios},
            "kill_after_ms": {
                s.name: [round(t, 1) for t in s.kill_after_ms] for s in self.scenarios
            },
            "wall_s": round(self.wall_s, 1),
        }


def kill_during(server: ServeProcess, load: LoadRun, rng: random.Random) -> Op | None:
    """Kill the server at a drawn point of a critical write: its k-th (k in 2..4) plus a
    fraction of the shortest earlier one's duration (so that the point falls inside it).
    Returns that write (None when the load ended before reaching it; the kill then lands
    between writes)."""
    count, fraction = rng.randint(2, 4), rng.random()
    target = load.wait_critical(count)
    if target is None:
        server.kill()
        return None
    shortest = min(op.duration_s for op in load.ops[: load.ops.index(target)] if op.critical)
    time.sleep(max(0.0, target.started + fraction * shortest - time.perf_counter()))
    server.kill()
    target.killed_after_s = time.perf_counter() - target.started
    return target


def collection_counts(api: Api) -> dict[str, tuple[int, int]]:
    """Each collection's (documents, chunks)."""
    listed = api.json("GET", "/v1/collections")["data"]
    return {c["name"]: (c["num_documents"], c["num_chunks"]) for c in listed}


def untouched(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], group: list[Scenario]
) -> list[str]:
    """Collections no load of the round wrote to must hold what they held before it."""
    return [
        f"collection '{name}' changed from {counts} to {after.get(name)}"
        for name, counts in before.items()
        if not any(s.touches(name) for s in group) and after.get(name) != counts
    ]


def refused(ops: list[Op], name: str) -> list[str]:
    """Writes the live server answered with an error (the load never asks for one)."""
    return [f"{name}: {op.kind} {op.path} answered {op.status}" for op in ops
            if op.status is not None and not op.acked]  # fmt: skip


@dataclass
class Round:
    """One kill: the scenarios loaded together, the one whose write the kill point is drawn
    in, and what came of it."""

    group: list[Scenario]
    lead: Scenario
    tallies: dict[str, Tally] = field(default_factory=dict)
    startup_s: float = 0.0
    target: Op | None = None  # the lead's write the kill point was drawn in


class Campaign:
    """One server lineage on one data directory."""

    def __init__(self, root: Path, model_dir: Path | None, threads: int) -> None:
        self.server = ServeProcess(root, model_dir, threads)
        self.inspector = Inspector(generation_model_path(hf_dir=model_dir))
        self.api: Api | None = None
        self.baseline_s = self.last_startup_s = 0.0

    def start(self) -> Api:
        """(Re)start the server; a fresh client for it."""
        startup_s = self.server.start()
        if self.api is not None:
            self.api.close()
        self.api = Api(self.server.url)
        self.last_startup_s = startup_s
        # The embedder loads on first use: load it now, so that no write is slowed by it.
        self.api.json("POST", "/v1/embeddings", {"input": "warm", "model": "all-MiniLM-L6-v2"})
        return self.api

    def run(self, plan: Round, round_no: int, rng: random.Random) -> None:
        """Load every scenario of the round, kill during the lead's write, check the data
        directory, restart, check over HTTP; fills `plan`."""
        api = self.api
        assert api is not None
        before = collection_counts(api)
        loads = {s.name: LoadRun(s.operations(round_no), api) for s in plan.group}
        for load in loads.values():
            load.start()
        target = kill_during(self.server, loads[plan.lead.name], rng)
        for name, load in loads.items():
            load.join()
            if load.error is not None:
                raise RuntimeError(f"the {name} load failed") from load.error
        plan.target = target
        findings = self.inspector.inspect(self.server.data_dir)
        for s in plan.group:
            plan.tallies[s.name] = s.check_offline(self.inspector, findings, loads[s.name].ops)
        api = self.start()
        plan.startup_s = self.last_startup_s
        for s in plan.group:
            plan.tallies[s.name].add(s.verify(api, loads[s.name].ops))
            plan.tallies[s.name].violations += refused(loads[s.name].ops, s.name)
        lead = plan.tallies[plan.lead.name]
        lead.violations += findings.violations
        lead.violations += untouched(before, collection_counts(api), plan.group)
        if plan.startup_s > STARTUP_FACTOR * self.baseline_s + STARTUP_SLACK_S:
            lead.violations.append(f"restart took {plan.startup_s:.1f} s")


def run_campaign(
    root: Path,
    kills_per_scenario: int,
    seed: int,
    model_dir: Path | None = None,
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    together: bool = False,
    threads: int = 1,
    log: Callable[[str], None] = lambda line: None,
    progress: Callable[[CampaignResult], None] = lambda partial: None,
) -> CampaignResult:
    """Run the campaign under `root` (`model_dir` None: the bundled SmolLM2) and stop the
    server cleanly at the end (its saved indexes are checked then); `progress` gets the
    figures so far after every kill.

    One scenario at a time, or with `together` all of them loaded at once, the kill drawn
    in each one's write in turn: every kill then counts for every scenario (fewer restarts
    for the same number of kills per scenario)."""
    started = time.perf_counter()
    campaign = Campaign(root, model_dir, threads)
    results = {name: ScenarioResult(name) for name in scenarios}
    built = [SCENARIOS[name](seed * 1000 + n) for n, name in enumerate(scenarios)]
    plans = (
        [Round(built, built[r % len(built)]) for r in range(kills_per_scenario)]
        if together
        else [Round([s], s) for s in built for _ in range(kills_per_scenario)]
    )
    rng = random.Random(seed)
    try:
        api = campaign.start()
        for scenario in built:
            scenario.setup(api)
        # A clean stop saves the FAISS and hnswlib indexes: the kills then leave saved files
        # behind, stale for what the loads write after, intact for the rest.
        campaign.server.stop()
        api = campaign.start()
        campaign.baseline_s = campaign.last_startup_s
        log(f"baseline start {campaign.baseline_s:.1f} s")
        for round_no, plan in enumerate(plans):
            campaign.run(plan, round_no, rng)
            for name, tally in plan.tallies.items():
                results[name].add(plan, tally)
            progress(CampaignResult(campaign.baseline_s, list(results.values())))
            after_ms = plan.target.killed_after_s * 1000 if plan.target else -1
            log(f"kill {round_no + 1}/{len(plans)} in {plan.lead.name}: "
                f"{after_ms:.0f} ms into the write, restart {plan.startup_s:.1f} s, "
                f"{ {name: asdict(t) for name, t in plan.tallies.items()} }")  # fmt: skip
    finally:
        campaign.server.stop()
        if campaign.api is not None:
            campaign.api.close()
    final = campaign.inspector.saved_indexes(campaign.server.data_dir)
    outcome = CampaignResult(campaign.baseline_s, list(results.values()), final)
    outcome.wall_s = time.perf_counter() - started
    return outcome
