"""Workload of `bench_load.py`: documents packed from Wikipedia leads, request bodies, the
mixed open-loop workload (Poisson arrivals, outcomes summarised per rate), and the report
(tables and the plot)."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

from load_client import LOST, Outcome, cache_counts, diff, metrics, pct, send

from ragkv.retrieval.loaders import wikipedia_sample_path

DOC_TOKENS = 248  # under the 256-token chunk: each document is one chunk


class DocPool:
    """Documents of up to `DOC_TOKENS` tokens of the served model, packed from Wikipedia
    leads (seeded order; one paragraph, so the server's chunker keeps each whole); `take`
    never hands out the same document twice, so a taken document is new to a server."""

    def __init__(self, seed: int, max_tokens: int = DOC_TOKENS) -> None:
        from ragkv.assets import generation_model_path
        from ragkv.engine.tokenizer import Tokenizer

        self.tokenizer, self.max_tokens = Tokenizer(generation_model_path()), max_tokens
        data = json.loads(wikipedia_sample_path().read_text(encoding="utf-8"))
        leads = sorted(
            (str(e.get("title") or t), " ".join(str(e["extract"]).split()))
            for t, e in data.items()
            if len(str(e.get("extract") or "")) > 200
        )
        random.Random(seed).shuffle(leads)
        self.docs: list[dict[str, str]] = []
        text, first = "", ""
        for title, extract in leads:
            text, first = f"{text} {title}. {extract}".strip(), first or title
            if len(text) >= 5 * max_tokens:  # ~4.7 characters a token: over the budget
                self.docs.append({"id": f"doc-{len(self.docs)}", "text": text, "title": first})
                text, first = "", ""
        self.next = 0

    def take(self, count: int) -> list[dict[str, str]]:
        """`count` documents never taken before, each cut (between words) to the budget."""
        if self.next + count > len(self.docs):
            raise SystemExit(f"the document pool ran out ({len(self.docs)} documents)")
        taken = self.docs[self.next : self.next + count]
        self.next += count
        for doc in taken:
            while (tokens := len(self.tokenizer.encode(doc["text"]))) > self.max_tokens:
                keep = int(len(doc["text"]) * self.max_tokens / tokens * 0.98)
                doc["text"] = doc["text"][:keep].rsplit(" ", 1)[0]
        return taken


def wire_docs(docs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Documents as the API takes them (`id` and `text`; the title is ours only)."""
    return [{"id": d["id"], "text": d["text"]} for d in docs]


def chat_body(messages: list[dict], max_tokens: int, **ragkv: Any) -> dict[str, Any]:
    """A streamed, greedy chat body; `ragkv` fields go into the extension object."""
    options = {"semantic_cache": False} | ragkv
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ragkv": options}  # fmt: skip


def rag_body(question: str, docs: list[dict], max_tokens: int, kv_reuse: str = "auto") -> dict:
    """A streamed RAG chat over inline `docs` (semantic cache off)."""
    body = chat_body([{"role": "user", "content": question}], max_tokens, kv_reuse=kv_reuse)
    return body | {"documents": wire_docs(docs)}


class Mix:
    """The mixed load workload: plain chats, RAG over cached documents, RAG over new ones,
    repeated and paraphrased questions (semantic cache on), and multi-turn agent sessions
    (one `session_id`, each turn carrying the previous answers). `next()` gives a request's
    kind and body; `done()` feeds an answer back (semantic seeds, agent turns)."""

    WEIGHTS = {"chat": 0.25, "rag_cached": 0.2, "rag_new": 0.1, "semantic": 0.25, "agent": 0.2}

    def __init__(self, docs: DocPool, cached: list[dict], max_tokens: int, seed: int) -> None:
        self.docs, self.cached, self.max_tokens = docs, cached, max_tokens
        self.rng, self.count = random.Random(seed), 0
        self.seeds: list[str] = []  # titles whose question was asked (its answer may be cached)
        self.idle_sessions: list[dict] = []
        self.sessions = 0

    def next(self) -> tuple[str, dict, dict | None]:
        """(kind, body, agent session or None) of the next request."""
        self.count += 1
        kind = self.rng.choices(list(self.WEIGHTS), weights=list(self.WEIGHTS.values()))[0]
        title = self.docs.docs[self.rng.randrange(len(self.docs.docs))]["title"]
        if kind == "chat":
            text = f"Request {self.count}: write three sentences about {title}."
            return kind, chat_body([{"role": "user", "content": text}], self.max_tokens), None
        if kind.startswith("rag"):
            docs = (
                self.rng.sample(self.cached, min(4, len(self.cached)))
                if kind == "rag_cached"
                else self.docs.take(4)
            )
            question = f"Request {self.count}: what do these documents say about {title}?"
            return kind, rag_body(question, docs, self.max_tokens), None
        if kind == "semantic":
            return self._semantic(title)
        return self._agent()

    def _semantic(self, title: str) -> tuple[str, dict, None]:
        if not self.seeds or self.rng.random() < 0.35:
            self.seeds.append(title)
            kind, text = "semantic_seed", f"In one sentence, what is {title}?"
        elif self.rng.random() < 0.5:
            seed = self.rng.choice(self.seeds)
            kind, text = "semantic_repeat", f"In one sentence, what is {seed}?"
        else:
            seed = self.rng.choice(self.seeds)
            kind, text = "semantic_paraphrase", f"In a single sentence, what is {seed}?"
        body = chat_body([{"role": "user", "content": text}], 48, semantic_cache=True)
        return kind, body | {"stop": ["\n"]}, None

    def _agent(self) -> tuple[str, dict, dict]:
        if self.idle_sessions:
            session = self.idle_sessions.pop(self.rng.randrange(len(self.idle_sessions)))
        else:
            self.sessions += 1
            place = self.rng.choice(self.docs.docs)["title"]
            task = f"Agent {self.sessions}: plan a trip to {place}."
            session = {"id": f"load-agent-{self.sessions}", "turns": 0,
                       "messages": [{"role": "user", "content": task}]}  # fmt: skip
        body = chat_body(session["messages"], self.max_tokens, session_id=session["id"])
        return "agent", body, session

    def done(self, session: dict | None, out: Outcome, max_turns: int = 4) -> None:
        """Feed an agent turn's answer back: the session takes the answer and a next
        question, and waits for its next turn (until `max_turns`)."""
        if session is None or out.result != "ok":
            return
        session["turns"] += 1
        session["messages"] = session["messages"] + [
            {"role": "assistant", "content": out.text},
            {"role": "user", "content": f"Good. Now step {session['turns'] + 1}: go on."},
        ]
        if session["turns"] < max_turns:
            self.idle_sessions.append(session)


def poisson_offsets(rate: float, duration_s: float, cap: int, rng: random.Random) -> list[float]:
    """Open-loop arrival times (s from start) of a Poisson process, at most `cap` of them."""
    offsets, now = [], rng.expovariate(rate)
    while now < duration_s and len(offsets) < cap:
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


async def drive(client, mix: Mix, offsets: list[float], timeout_s: float) -> list[Outcome]:
    """Send the mix at the given offsets whatever the answers do (open loop); all outcomes."""

    async def one(kind: str, body: dict, session: dict | None) -> Outcome:
        out = await send(client, body, timeout_s, kind)
        mix.done(session, out)
        return out

    start, tasks = time.perf_counter(), []
    for offset in offsets:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        tasks.append(asyncio.create_task(one(*mix.next())))
    return list(await asyncio.gather(*tasks))


async def sample_pages(client, stop: asyncio.Event, out: list[dict], every_s: float = 1.0):
    """KV pool used pages, queue and running sequences from `/metrics` until `stop`."""
    while not stop.is_set():
        values = await metrics(client)
        used = values["ragkv_kv_pool_pages"] - values["ragkv_kv_pool_free_pages"]
        out.append({"used_pages": used, "waiting": values["ragkv_engine_waiting"],
                    "running": values["ragkv_engine_running"]})  # fmt: skip
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def run_rate(client, mix: Mix, rate: float, duration_s: float, cap: int, timeout_s: float,
                   seed: int) -> dict:  # fmt: skip
    """One open-loop window at `rate` req/s: its summary (see `summarize`)."""
    offsets = poisson_offsets(rate, duration_s, cap, random.Random(seed))
    before, stop, samples = await cache_counts(client), asyncio.Event(), []
    sampler = asyncio.create_task(sample_pages(client, stop, samples))
    started = time.perf_counter()
    outs = await drive(client, mix, offsets, timeout_s)
    wall_s = time.perf_counter() - started
    stop.set()
    await sampler
    caches = diff(before, await cache_counts(client))
    return summarize(rate, duration_s, wall_s, outs, samples) | {"caches": caches}


def summarize(rate, duration_s, wall_s, outs: list[Outcome], samples: list[dict]) -> dict:
    """Offered and achieved rates, output tokens/s, TTFT and inter-token percentiles, counts
    by outcome, 503s with and without Retry-After, lost requests, KV pool pages used."""
    ok = [o for o in outs if o.result == "ok"]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    streamed = [o for o in ok if o.cache != "semantic-hit"]
    itl = [b - a for o in streamed for a, b in zip(o.arrivals, o.arrivals[1:], strict=False)]
    busy = [o for o in outs if o.status == 503]
    used = [s["used_pages"] for s in samples]
    by_kind: dict[str, list[float]] = {}
    for o in ok:
        by_kind.setdefault(o.kind, []).append(o.ttft_s or 0.0)
    return {
        "rate": rate, "requests": len(outs), "offered_per_s": len(outs) / duration_s,
        "achieved_per_s": len(ok) / wall_s, "wall_s": wall_s,
        "output_tokens_per_s": sum(o.usage.get("completion_tokens", 0) for o in ok) / wall_s,
        "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99),
        "itl_p50_s": pct(itl, 50), "itl_p99_s": pct(itl, 99),
        "results": dict(Counter(o.result for o in outs)),
        "status": dict(Counter(str(o.status) for o in outs)),
        "in_stream_errors": sum(o.result == "stream_error" for o in outs),
        "busy_503_retry_after": sum(o.retry_after is not None for o in busy),
        "busy_503_no_retry_after": sum(o.retry_after is None for o in busy),
        "lost": sum(o.result in LOST for o in outs),
        "used_pages_mean": statistics.fmean(used) if used else None,
        "used_pages_max": max(used, default=None),
        "waiting_max": max((s["waiting"] for s in samples), default=None),
        "ttft_p50_s_by_kind": {k: pct(v, 50) for k, v in sorted(by_kind.items())},
        "semantic_by_kind": dict(Counter(f"{o.kind}:{o.ragkv.get('semantic_cache')}"
                                         for o in ok if o.kind.startswith("semantic"))),
        "errors": [o.error for o in outs if o.error][:5],
    }  # fmt: skip


# -- report ----------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for the tables ('-' for none)."""
    return "-" if seconds is None else f"{1000 * seconds:,.0f}"


def print_load_row(row: dict) -> None:
    """One rate of the load part as a table row."""
    caches = row["caches"]
    print(f"{row['rate']:5.2f} {row['offered_per_s']:7.2f} {row['achieved_per_s']:7.2f} "
          f"{row['output_tokens_per_s']:7.1f} {ms(row['ttft_p50_s']):>8s} "
          f"{ms(row['ttft_p99_s']):>8s} {ms(row['itl_p50_s']):>6s} {ms(row['itl_p99_s']):>7s} "
          f"{row['busy_503_retry_after']:>3d}/{row['busy_503_no_retry_after']:<3d} "
          f"{row['lost']:>4d} {row['used_pages_max'] or 0:>6.0f} "
          f"sem {caches['semantic_hits']:.0f} pre {caches['prefix_cached_tokens']:.0f}t "
          f"chunk {caches['chunk_hits_cpu'] + caches['chunk_hits_disk']:.0f} "
          f"{json.dumps(row['results'])}")  # fmt: skip


def print_summary(part: str, result: dict) -> None:
    """The headline figures of one part."""
    if part == "stall":
        for name in ("blend", "plain"):
            r = result[name]
            print(f"stall {name:5s}: largest gap {ms(r['largest_gap_s'])} ms (baseline "
                  f"{ms(r['baseline_gap_s'])}), TTFT {ms(r['ttft_s'])} ms, {r['prompt_tokens']}"
                  f" prompt tokens, streams outlasted {r['streams_outlasted']}")  # fmt: skip
        print(f"stall ratio blend/plain {result['gap_ratio_blend_over_plain']:.2f} (<= 1.5)")
    elif part == "rag8":
        for name in ("auto", "full"):
            r = result[name]
            print(f"rag8 {name:4s}: TTFT p50 {ms(r['ttft_p50_s'])} ms, p90 {ms(r['ttft_p90_s'])}"
                  f" ms, {r['prompt_tokens_p50']} prompt tokens, {r['results']}")  # fmt: skip
        print(f"rag8 ratio full/auto {result['ttft_p50_ratio_full_over_auto']:.2f} (>= 2.5)")
    elif part == "tiers":
        for name in ("cpu", "disk"):
            r = result[name]
            counts = {k[6:]: v for k, v in r["chunk_counters"].items() if v}
            print(f"tiers {name:4s}: TTFT p50 {ms(r['ttft_p50_s'])} ms, chunk {counts}")
        print(f"tiers ratio disk/cpu {result['ttft_p50_ratio_disk_over_cpu']:.2f} (<= 1.15)")
    elif part == "soak":
        warm, before, after = result["after_warmup"], result["idle_before"], result["idle_after"]
        print(f"soak: after warm-up -> end: RSS {warm['rss_mb']:.0f} -> {after['rss_mb']:.0f} "
              f"MiB, fds {warm['fds']} -> {after['fds']}; idle free KV pages "
              f"{before['free_pages']} -> {after['free_pages']} (cached {after['cached_pages']}, "
              f"locked {after['locked_pages']}, unaccounted {after['unaccounted_pages']}); lost "
              f"{result['load']['lost']}")  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    """TTFT p50/p99 and throughput vs offered rate (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib for load.png)")
        return
    offered = [r["offered_per_s"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("ttft_p50_s", "ttft_p99_s"):
        left.plot(offered, [r[key] or 0 for r in rows], marker="o", label=key[:8])
    left.set(xlabel="offered req/s", ylabel="TTFT s", yscale="log")
    left.legend()
    right.plot(offered, [r["achieved_per_s"] for r in rows], marker="o", label="achieved req/s")
    right.plot(offered, offered, linestyle=":", label="offered")
    right.set(xlabel="offered req/s", ylabel="req/s")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")
