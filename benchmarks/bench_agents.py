"""Agent benchmark: tool-aware KV pins vs none vs fixed 60 s pins, on a live server.

N agents run concurrently, each for `--turns` turns: a turn asks with tools
(`tool_choice: required`), gets a tool call, waits a simulated tool latency drawn from that
tool's distribution (lognormal), then sends the result; the last turn answers in text. A
background client keeps other prompts flowing through a small KV pool, so cached KV that is
not pinned gets evicted while an agent waits on its tool. Three servers, one per policy:
  (a) no pins (`engine.tool_pin_max_share` 0),
  (b) fixed 60 s pins (min = max = default TTL = 60 s),
  (c) tool-aware pins (TTL from each tool's observed round trips; the defaults).
Reported per policy: prompt tokens reused (cached / prompt), TTFT of the turn after a tool
call p50/p99, pinned pages over time (mean and max, sampled), pins made/hit/expired, and
job completion time per agent. Prints a table and JSON. Not a test: nothing is asserted.

    python benchmarks/bench_agents.py                       # 3 agents x 5 turns
    python benchmarks/bench_agents.py --agents 2 --turns 3  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from live import start_server
from machine import machine

RESULTS = Path(__file__).parent / "results" / "agents.json"
ADMIN_KEY = "sk-bench-admin"
BACKGROUND_GAP_S = 1.0
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOOLS = {  # name -> (median seconds, lognormal sigma) of the simulated tool latency
    "web_search": (3.0, 0.4),
    "calculator": (0.5, 0.3),
    "read_file": (1.5, 0.5),
}
SHARE = {"tool_pin_max_share": 0.6}  # of a small pool: room for about three agents' turns
POLICIES = {
    "none": {"tool_pin_max_share": 0.0},
    "fixed_60s": SHARE
    | {"tool_pin_ttl_s": 60.0, "tool_pin_min_ttl_s": 60.0, "tool_pin_max_ttl_s": 60.0},
    "tool_aware": SHARE,
}


def tool_defs() -> list[dict]:
    """The tools every agent is offered."""
    schema = {"type": "object", "properties": {"query": {"type": "string", "maxLength": 40}},
              "required": ["query"]}  # fmt: skip
    return [
        {"type": "function", "function": {"name": n, "description": n, "parameters": schema}}
        for n in TOOLS
    ]


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


async def turn(client: httpx.AsyncClient, messages: list[dict], final: bool) -> tuple[dict, float]:
    """One streamed agent turn: (the assistant message, TTFT seconds)."""
    body = {"model": "default", "messages": messages, "tools": tool_defs(), "temperature": 0,
            "max_tokens": 40, "stream": True,
            "tool_choice": "none" if final else "required"}  # fmt: skip
    started, ttft = time.perf_counter(), None
    content, calls, usage = "", [], {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if ttft is None and chunk.get("choices"):
                # The first chunk (the role) leaves once the first token is sampled; a tool
                # call's own delta comes only when the call is complete.
                ttft = time.perf_counter() - started
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                content += delta.get("content") or ""
                calls += delta.get("tool_calls") or []
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{k: c[k] for k in ("id", "type", "function")} for c in calls]
    return {"message": message, "usage": usage}, ttft or (time.perf_counter() - started)


async def agent(client: httpx.AsyncClient, index: int, turns: int, rng: random.Random) -> dict:
    """One agent's job: `turns` turns with tool waits between them."""
    task = f"Agent {index}: research topic number {index * 7 + 3} and report."
    messages = [{"role": "user", "content": task}]
    started, after_tool, prompt, cached = time.perf_counter(), [], 0, 0
    for number in range(turns):
        result, ttft = await turn(client, messages, final=number == turns - 1)
        usage = result["usage"]
        prompt += usage.get("prompt_tokens", 0)
        cached += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        if number > 0:
            after_tool.append(ttft)
        message = result["message"]
        messages.append(message)
        for call in message.get("tool_calls", []):
            median, sigma = TOOLS[call["function"]["name"]]
            await asyncio.sleep(rng.lognormvariate(0, sigma) * median)
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": f"result {rng.randint(0, 999)}"})  # fmt: skip
        if not message.get("tool_calls") and number < turns - 1:
            messages.append({"role": "user", "content": "Please use a tool."})
    return {"seconds": time.perf_counter() - started, "after_tool_ttft": after_tool,
            "prompt_tokens": prompt, "cached_tokens": cached}  # fmt: skip


async def background(client: httpx.AsyncClient, stop: asyncio.Event, rng: random.Random) -> int:
    """Other traffic: a fresh ~300-token prompt (one token out) every `BACKGROUND_GAP_S`, so
    KV that is not pinned is evicted while its agent waits, without saturating the CPU."""
    sent = 0
    while not stop.is_set():
        words = " ".join(str(rng.randint(0, 10**6)) for _ in range(45))  # ~7 tokens a number
        body = {"prompt": words, "max_tokens": 1, "temperature": 0}
        response = await client.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"background request failed: {response.text}")
        sent += 1
        await asyncio.sleep(BACKGROUND_GAP_S)
    return sent


async def sample_pins(client, stop: asyncio.Event, out: list[int]) -> None:
    """Pinned pages every half second."""
    while not stop.is_set():
        stats = (await client.get("/admin/cache/stats", headers=ADMIN)).json()
        out.append(stats["prefix"]["tool_pins"]["pinned_pages"])
        await asyncio.sleep(0.5)


async def run_policy(url: str, agents: int, turns: int, seed: int) -> dict:
    """The workload against one server."""
    rng = random.Random(seed)
    stop, pinned = asyncio.Event(), []
    headers = {"Authorization": "Bearer sk-bench"}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:
        noise = asyncio.create_task(background(client, stop, random.Random(seed + 1)))
        sampler = asyncio.create_task(sample_pins(client, stop, pinned))
        jobs = [agent(client, i, turns, random.Random(rng.random())) for i in range(agents)]
        results = await asyncio.gather(*jobs)
        stop.set()
        sent = await noise
        await sampler
        pins = (await client.get("/admin/cache/stats", headers=ADMIN)).json()
        pins = pins["prefix"]["tool_pins"]
    ttfts = sorted(t for r in results for t in r["after_tool_ttft"])
    prompt = sum(r["prompt_tokens"] for r in results)
    return {
        "reused_share": sum(r["cached_tokens"] for r in results) / max(1, prompt),
        "after_tool_ttft_p50_s": statistics.median(ttfts),
        "after_tool_ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "pinned_pages_mean": statistics.fmean(pinned) if pinned else 0.0,
        "pinned_pages_max": max(pinned, default=0),
        "job_seconds_mean": statistics.fmean(r["seconds"] for r in results),
        "pins": pins,
        "background_requests": sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--kv-cache-mb", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = {}
    for name, overrides in POLICIES.items():
        url, stop = policy_server(overrides, args.kv_cache_mb)
        try:
            rows[name] = asyncio.run(run_policy(url, args.agents, args.turns, args.seed))
        finally:
            stop()
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "pins"}))
    base, aware = rows["none"], rows["tool_aware"]
    summary = {
        "after_tool_ttft_p50_speedup_vs_none": base["after_tool_ttft_p50_s"]
        / aware["after_tool_ttft_p50_s"],
        "reuse_aware_minus_fixed": aware["reused_share"] - rows["fixed_60s"]["reused_share"],
        "pinned_pages_mean_aware_vs_fixed": (
            aware["pinned_pages_mean"],
            rows["fixed_60s"]["pinned_pages_mean"],
        ),
    }
    print(
        f"{'policy':12s} {'reused':>7s} {'ttft p50':>9s} {'ttft p99':>9s} "
        f"{'pinned':>7s} {'job s':>7s}"
    )
    for name, row in rows.items():
        print(f"{name:12s} {row['reused_share']:7.2f} {row['after_tool_ttft_p50_s']:9.3f} "
              f"{row['after_tool_ttft_p99_s']:9.3f} {row['pinned_pages_mean']:7.1f} "
              f"{row['job_seconds_mean']:7.1f}")  # fmt: skip
    print(json.dumps(summary))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "args": vars(args) | {"json": str(args.json)},
              "rows": rows, "summary": summary}  # fmt: skip
    args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
