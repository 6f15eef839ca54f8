"""Agent benchmark: tool-aware KV pins vs none vs fixed 60 s pins, on a live server.

N agents run concurrently, each for `--turns` turns. Each agent carries its own system prompt
(`--system-tokens` of agent instructions and tool docs, different text per agent, so agents
share no prefix; 0 gives the old tiny conversations). A turn asks with tools (`tool_choice:
required`), gets a tool call, waits a simulated tool latency drawn from that tool's
distribution (lognormal), then sends the result; the last turn answers in text. Background
traffic sends a fresh ~300-token prompt every `--background-gap-s` on average (Poisson
arrivals, an open loop), so cached KV that is not pinned gets evicted while an agent waits on
its tool. The KV pool is `--kv-cache-mb`, or by
default `--pool-fraction` of the agents' estimated working set. Three servers, one per policy:
  (a) no pins (`engine.tool_pin_max_share` 0),
  (b) fixed 60 s pins (min = max = default TTL = 60 s), held from the tool call on,
  (c) tool-aware pins (TTL from each tool's observed round trips, held only once eviction
      reaches the waiting conversation; the defaults).
Reported per policy: prompt tokens reused (cached / prompt, all turns and turns after a tool
result), TTFT of the turn after a tool result p50/p99 (time to the first SSE chunk: the server
sends it once the first token is sampled), pinned pages over time, pool pressure (free and
evictable pages sampled, preemptions), pins made/hit/expired, and job time per agent. Prints
a table and JSON. Not a test: nothing is asserted.

    python benchmarks/bench_agents.py                       # 4 agents x 5 turns, 1K system,
                                    # tools 6x their base medians: issue 20's targets (tools
                                    # outlast what LRU keeps: the case pins are for)
    python benchmarks/bench_agents.py --abandon-share 0.2   # a fifth of the agents give up
    python benchmarks/bench_agents.py --pool-fraction 0.6   # a pool short of the agents
    python benchmarks/bench_agents.py --agents 2 --turns 2  # smoke
    python benchmarks/bench_agents.py --tool-latency-scale 3
                                    # faster tools: the no-pin server keeps most conversations
    python benchmarks/bench_agents.py --agents 3 --system-tokens 0 --kv-cache-mb 48 \
        --max-tokens 40 --tool-latency-scale 1              # the old workload
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from agent_workload import KV_BYTES_PER_TOKEN, system_prompt, tool_defs, tool_latency_s
from live import start_server
from machine import machine

RESULTS = Path(__file__).parent / "results" / "agents.json"
ADMIN_KEY = "sk-bench-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOOL_BLOCK_TOKENS = 260  # the tools' system block, the task and the chat template, per agent
TURN_TOKENS = 70  # a turn's call (or nudge) and tool result in the next prompt
BACKGROUND_TOKENS = 320  # one background prompt
BACKGROUND_IN_FLIGHT = 8  # background prompts outstanding at most (more arrivals are skipped)
# An after-tool turn is a hit when at least this share of its prompt was cached. The p50 over
# all turns sits between the hits (under ~2 s) and the misses (5-8 s on 2 cores), so one miss
# more moves it ~2x; the hits' own median says how fast a hit is served.
HIT_SHARE = 0.8
PIN_LOGGER = "ragkv.engine.tool_pins"  # the engine's pin events, at DEBUG (`--pin-log`)
SHARE = {"tool_pin_max_share": 0.6}
POLICIES = {
    "none": {"tool_pin_max_share": 0.0},
    "fixed_60s": SHARE
    | {
        "tool_pin_ttl_s": 60.0,
        "tool_pin_min_ttl_s": 60.0,
        "tool_pin_max_ttl_s": 60.0,
        "tool_pin_on_demand": False,
    },
    "tool_aware": SHARE,
}


def policy_server(engine_overrides: dict, kv_cache_mb: int):
    """A live server with the policy's engine settings and a small KV pool; (url, stop)."""
    from ragkv.settings import Settings

    settings = Settings.load(
        data_dir=tempfile.mkdtemp(prefix="ragkv-bench-agents-"),
        engine={"kv_cache_mb": kv_cache_mb, **engine_overrides},
        semantic_cache={"enabled": False},
        auth={"api_keys": {"sk-bench": "bench"}, "admin_key": ADMIN_KEY},
    )
    return start_server(settings)


async def turn(
    client: httpx.AsyncClient, messages: list[dict], final: bool, max_tokens: int
) -> tuple[dict, float]:
    """One streamed agent turn: ({message, usage, finish}, TTFT seconds)."""
    body = {"model": "default", "messages": messages, "tools": tool_defs(), "temperature": 0,
            "max_tokens": max_tokens, "stream": True,
            "tool_choice": "none" if final else "required"}  # fmt: skip
    started, ttft = time.perf_counter(), None
    content, calls, usage, finish = "", [], {}, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if ttft is None and chunk.get("choices"):
                # The first chunk (the role) leaves once the engine's first output (the first
                # sampled token) is in (`Pipeline._generate` awaits it before answering); a
                # `required` call's own delta comes only when the whole call parses.
                ttft = time.perf_counter() - started
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                content += delta.get("content") or ""
                calls += delta.get("tool_calls") or []
                finish = choice.get("finish_reason") or finish
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = joined(calls)
    result = {"message": message, "usage": usage, "finish": finish}
    return result, ttft or (time.perf_counter() - started)


def joined(deltas: list[dict]) -> list[dict]:
    """Whole tool calls from streamed tool-call deltas (id, type and name on a call's first
    delta, its arguments in pieces), merged by index as OpenAI clients do."""
    calls: dict[int, dict] = {}
    for delta in deltas:
        empty = {"type": "function", "function": {"name": "", "arguments": ""}}
        call = calls.setdefault(delta["index"], empty)
        call["id"] = delta.get("id") or call.get("id")
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]


async def agent(client: httpx.AsyncClient, index: int, args, system: str, seed: float) -> dict:
    """One agent's job: `args.turns` turns with tool waits between them."""
    rng = random.Random(seed)
    # Whether the agent gives up after each turn's tool call is drawn up front from its own
    # generator: the same for every policy, whatever the model wrote (the tool latencies
    # follow the calls the model made).
    gives_up = random.Random(seed + 0.5)
    gives_up_after = [gives_up.random() < args.abandon_share for _ in range(args.turns)]
    task = f"Agent {index}: research topic number {index * 7 + 3} and report."
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": task})
    started, after_tool, tool_calls, cut = time.perf_counter(), [], 0, 0
    abandoned = False
    totals = {"prompt": 0, "cached": 0, "after_prompt": 0, "after_cached": 0, "first": 0}
    came_back = False  # this turn's prompt ends with tool results
    for number in range(args.turns):
        result, ttft = await turn(client, messages, number == args.turns - 1, args.max_tokens)
        prompt = result["usage"].get("prompt_tokens", 0)
        cached = result["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        totals["prompt"] += prompt
        totals["cached"] += cached
        totals["first"] = totals["first"] or prompt
        if came_back:
            after_tool.append((ttft, prompt, cached))
            totals["after_prompt"] += prompt
            totals["after_cached"] += cached
        message = result["message"]
        messages.append(message)
        if message.get("tool_calls") and gives_up_after[number]:
            abandoned = True  # the tool failed or the user gave up: this agent never returns
            break
        for call in message.get("tool_calls", []):
            tool_calls += 1
            wait = tool_latency_s(call["function"]["name"], rng) * args.tool_latency_scale
            await asyncio.sleep(wait)
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": f"result {rng.randint(0, 999)}"})  # fmt: skip
        came_back = bool(message.get("tool_calls"))
        if not came_back and number < args.turns - 1:
            cut += 1  # no call (cut by max_tokens): the agent nudges, no tool wait
            messages.append({"role": "user", "content": "Please use a tool."})
    return {"seconds": time.perf_counter() - started, "after_tool_ttft": after_tool,
            "tool_calls": tool_calls, "turns_without_call": cut, "abandoned": abandoned,
            **totals}  # fmt: skip


async def background(
    client: httpx.AsyncClient, stop: asyncio.Event, rng: random.Random, gap_s: float
) -> dict:
    """Other traffic: a fresh ~300-token prompt (one token out) every `gap_s` on average,
    Poisson arrivals that do not wait for earlier answers (an open loop, as a serving
    benchmark's request rate: a closed loop sends less the busier the server is, so the
    pressure it puts on the cache would depend on the policy under test). At most
    `BACKGROUND_IN_FLIGHT` are outstanding; an arrival past that is skipped and counted."""
    sent, skipped, tasks = 0, 0, set()

    async def one(body: dict) -> None:
        response = await client.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"background request failed: {response.text}")

    while not stop.is_set():
        words = " ".join(str(rng.randint(0, 10**6)) for _ in range(45))  # ~7 tokens a number
        if len(tasks) < BACKGROUND_IN_FLIGHT:
            task = asyncio.create_task(one({"prompt": words, "max_tokens": 1, "temperature": 0}))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        else:
            skipped += 1
        await asyncio.sleep(rng.expovariate(1.0 / gap_s))
    await asyncio.gather(*tasks)
    return {"sent": sent, "skipped": skipped}


async def sample_pool(client, stop: asyncio.Event, out: list[dict]) -> None:
    """Tool-pinned, free and evictable pages every half second."""
    while not stop.is_set():
        stats = (await client.get("/admin/cache/stats", headers=ADMIN)).json()["prefix"]
        out.append({"pinned": stats["tool_pins"]["pinned_pages"], "free": stats["free_pages"],
                    "evictable": stats["evictable_pages"]})  # fmt: skip
        await asyncio.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    """The `q` quantile (nearest rank below) of `values`; 0 when empty."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def run_policy(url: str, args, systems: list[str]) -> dict:
    """The workload against one server."""
    rng = random.Random(args.seed)
    stop, samples = asyncio.Event(), []
    headers = {"Authorization": "Bearer sk-bench"}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:
        noise = background(client, stop, random.Random(args.seed + 1), args.background_gap_s)
        noise = asyncio.create_task(noise)
        sampler = asyncio.create_task(sample_pool(client, stop, samples))
        jobs = [agent(client, i, args, systems[i], rng.random()) for i in range(args.agents)]
        results = await asyncio.gather(*jobs)
        stop.set()
        noise = await noise
        await sampler
        prefix = (await client.get("/admin/cache/stats", headers=ADMIN)).json()["prefix"]
    turns = [t for r in results for t in r["after_tool_ttft"]]
    ttfts = [ttft for ttft, _, _ in turns]
    total = {key: sum(r[key] for r in results) for key in ("prompt", "cached", "after_prompt",
             "after_cached", "tool_calls", "turns_without_call")}  # fmt: skip
    pinned = [s["pinned"] for s in samples]
    return {
        "reused_share": total["cached"] / max(1, total["prompt"]),
        "after_tool_reused_share": total["after_cached"] / max(1, total["after_prompt"]),
        "after_tool_recomputed_tokens": total["after_prompt"] - total["after_cached"],
        "after_tool_turns": len(ttfts),
        "after_tool_ttft_p50_s": statistics.median(ttfts) if ttfts else 0.0,
        "after_tool_ttft_p99_s": pct(ttfts, 0.99),
        # every after-tool turn: [TTFT s, prompt tokens, cached tokens]
        "after_tool_turn_detail": [[round(t, 3), p, c] for t, p, c in turns],
        **hits_and_misses(turns),
        "pinned_pages_mean": statistics.fmean(pinned) if pinned else 0.0,
        "pinned_pages_max": max(pinned, default=0),
        "free_pages_mean": statistics.fmean(s["free"] for s in samples) if samples else 0.0,
        "free_pages_min": min((s["free"] for s in samples), default=0),
        "evictable_pages_mean": statistics.fmean(s["evictable"] for s in samples)
        if samples
        else 0.0,
        "pool_pages": prefix["pool_pages"],
        "preemptions": prefix["preemptions"],
        "job_seconds_mean": statistics.fmean(r["seconds"] for r in results),
        "job_seconds": [round(r["seconds"], 2) for r in results],
        "first_prompt_tokens": [r["first"] for r in results],
        "tool_calls": total["tool_calls"],
        "turns_without_call": total["turns_without_call"],
        "agents_abandoned": sum(r["abandoned"] for r in results),
        "pins": prefix["tool_pins"],
        "background_requests": noise["sent"],
        "background_skipped": noise["skipped"],
    }


def hits_and_misses(turns: list[tuple[float, int, int]]) -> dict:
    """After-tool turns (TTFT, prompt, cached) split at `HIT_SHARE` cached: counts, medians."""
    hits = [ttft for ttft, prompt, cached in turns if cached >= HIT_SHARE * prompt]
    misses = [ttft for ttft, prompt, cached in turns if cached < HIT_SHARE * prompt]
    return {
        "after_tool_hits": len(hits),
        "after_tool_hit_ttft_p50_s": statistics.median(hits) if hits else None,
        "after_tool_miss_ttft_p50_s": statistics.median(misses) if misses else None,
    }


def pool_mb(args, first_prompt_tokens: int) -> int:
    """`--kv-cache-mb`, else `--pool-fraction` of the agents' working set: every agent's last
    prompt (its first plus `TURN_TOKENS` a turn) and one background prompt. Below 1.0 the
    agents' own turns outgrow the pool and preempt each other (not what pins are for)."""
    if args.kv_cache_mb is not None:
        return args.kv_cache_mb
    tokens = first_prompt_tokens + args.agents * TURN_TOKENS * args.turns + BACKGROUND_TOKENS
    return max(1, round(args.pool_fraction * tokens * KV_BYTES_PER_TOKEN / 2**20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--kv-cache-mb", type=int, default=None)
    parser.add_argument("--pool-fraction", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--background-gap-s", type=float, default=1.0)
    parser.add_argument(
        "--tool-latency-scale", type=float, default=6.0,
        help="multiply the simulated tool round trips (medians 3 / 0.5 / 1.5 s at 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--abandon-share", type=float, default=0.0,
        help="chance that an agent never comes back from a tool call (its job ends there)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policies", default=",".join(POLICIES),
        help="comma-separated subset of the policies to run (the summary needs all three)",
    )  # fmt: skip
    parser.add_argument(
        "--pin-log", type=Path, default=None,
        help="write the engine's pin events (logger ragkv.engine.tool_pins, DEBUG) here",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    policies = args.policies.split(",")
    if unknown := set(policies) - set(POLICIES):
        parser.error(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")
    if args.pin_log is not None:
        args.pin_log.write_text("")
        # Appending: uvicorn's logging config closes every handler at each server start, and
        # a closed handler opened "w" drops its records instead of opening the file again.
        handler = logging.FileHandler(args.pin_log, mode="a")
        handler.setFormatter(logging.Formatter("%(relativeCreated)d %(message)s"))
        logger = logging.getLogger(PIN_LOGGER)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    from ragkv.assets import generation_model_path, load_hf_tokenizer

    tokenizer = load_hf_tokenizer(generation_model_path())
    prompt_rng = random.Random(args.seed + 2)
    systems = [
        system_prompt(i, args.system_tokens, prompt_rng, tokenizer) for i in range(args.agents)
    ]
    first = sum(len(tokenizer.encode(s)) + TOOL_BLOCK_TOKENS for s in systems)
    kv_cache_mb = pool_mb(args, first)
    print(f"KV pool {kv_cache_mb} MB (~{int(kv_cache_mb * 2**20 / KV_BYTES_PER_TOKEN)} tokens)")
    rows = {}
    for name in policies:
        logging.getLogger(PIN_LOGGER).debug("policy %s", name)
        url, stop = policy_server(POLICIES[name], kv_cache_mb)
        try:
            rows[name] = asyncio.run(run_policy(url, args, systems))
        finally:
            stop()
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "pins"}))
    summary = summarize(rows) if len(rows) == len(POLICIES) else {}
    print_table(rows, summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "args": vars(args) | {"json": str(args.json),
              "pin_log": str(args.pin_log)}, "kv_cache_mb": kv_cache_mb, "rows": rows,
              "summary": summary}  # fmt: skip
    args.json.write_text(json.dumps(record, indent=2))


def summarize(rows: dict[str, dict]) -> dict:
    """Tool-aware pins against the two baselines (issue 20's targets)."""
    base, fixed, aware = rows["none"], rows["fixed_60s"], rows["tool_aware"]
    return {
        "after_tool_ttft_p50_speedup_vs_none": base["after_tool_ttft_p50_s"]
        / max(1e-9, aware["after_tool_ttft_p50_s"]),
        "reuse_aware_minus_fixed": aware["reused_share"] - fixed["reused_share"],
        "pinned_pages_mean_aware_vs_fixed": (
            aware["pinned_pages_mean"],
            fixed["pinned_pages_mean"],
        ),
    }


def print_table(rows: dict[str, dict], summary: dict) -> None:
    print(f"{'policy':12s} {'reused':>7s} {'after':>6s} {'ttft p50':>9s} {'ttft p99':>9s} "
          f"{'pinned':>7s} {'free':>6s} {'job s':>7s}")  # fmt: skip
    for name, row in rows.items():
        print(f"{name:12s} {row['reused_share']:7.2f} {row['after_tool_reused_share']:6.2f} "
              f"{row['after_tool_ttft_p50_s']:9.3f} {row['after_tool_ttft_p99_s']:9.3f} "
              f"{row['pinned_pages_mean']:7.1f} {row['free_pages_mean']:6.1f} "
              f"{row['job_seconds_mean']:7.1f}")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
