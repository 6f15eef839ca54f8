"""The "Auditing Prompt Caching" procedure on our own server: can a client tell from time to
first token that another client sent a prompt?

For each sample, tenant A (the victim) sends a fresh random prompt; then tenant B (the
attacker) sends the same prompt and, in alternating order, another fresh random prompt. The
times of the two are compared with a one-sided Mann-Whitney U test (exact, H1: the victim's
prompt is faster). Across tenants the caches are apart, so no difference may be detectable
(p > 0.01). Within one tenant the same procedure must detect the hit (p < 0.01), which shows
the test has the power to see a leak.

Under a true null hypothesis p <= 0.01 happens in 1% of runs by chance. A run that sees it
repeats the measurement once with new prompts and fails only if that is also <= 0.01 (a real
leak of this size gives p ~ 1e-5 every time), so the test does not fail by chance.
"""

from __future__ import annotations

import random
import time
from functools import cache

import httpx

from tests.conftest import LiveServer

VICTIM = {"Authorization": "Bearer sk-tenant-a"}
ATTACKER = {"Authorization": "Bearer sk-tenant-b"}
SAMPLES = 10
PROMPT_WORDS = 220  # ~300 tokens: a miss costs a prefill a hit mostly skips
ALPHA = 0.01
_WORD_LIST = (
    "amber basin cedar delta ember fjord garnet harbor island jasper kettle lagoon meadow "
    "nectar orchard pebble quarry ridge saddle timber upland valley willow yarrow zephyr "
    "anchor beacon canyon dune estuary forest glacier hollow inlet jungle knoll lantern marsh"
)
WORDS = _WORD_LIST.split()


@cache
def _arrangements(n: int, m: int, u: int) -> int:
    """How many orderings of n x's and m y's have exactly u pairs with x before y."""
    if u < 0 or u > n * m:
        return 0
    if n == 0 or m == 0:
        return 1 if u == 0 else 0
    # The largest value is an x (it precedes none of the y's) or a y (every x precedes it).
    return _arrangements(n - 1, m, u) + _arrangements(n, m - 1, u - n)


def mann_whitney_p(faster: list[float], slower: list[float]) -> float:
    """Exact one-sided p-value of H1 "`faster` tends to be smaller than `slower`"."""
    n, m = len(faster), len(slower)
    u = sum(1.0 if x < y else 0.5 if x == y else 0.0 for x in faster for y in slower)
    total = sum(_arrangements(n, m, k) for k in range(n * m + 1))
    at_least = sum(_arrangements(n, m, k) for k in range(int(u + 0.5), n * m + 1))
    return at_least / total


def test_mann_whitney_exact_values() -> None:
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == 1 / 20  # the one most extreme ordering
    assert mann_whitney_p([4, 5, 6], [1, 2, 3]) == 1.0
    # U=3 of 4: of the 6 orderings, xxyy (U=4) and xyxy (U=3) are as extreme
    assert abs(mann_whitney_p([1, 5], [2, 6]) - 2 / 6) < 1e-12


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(PROMPT_WORDS))


def seconds(live: LiveServer, headers: dict[str, str], text: str) -> float:
    """Time of a one-token completion: the time to first token as a client sees it."""
    body = {"prompt": text, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    response = httpx.post(f"{live.url}/v1/completions", json=body, headers=headers, timeout=300)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def audit(live: LiveServer, attacker: dict[str, str], seed: int) -> float:
    """p-value of "the victim's prompts are faster for `attacker` than fresh ones"."""
    rng = random.Random(seed)
    victims, fresh = [], []
    for sample in range(SAMPLES):
        sent, other = prompt(rng), prompt(rng)
        seconds(live, VICTIM, sent)
        if sample % 2:  # alternate which of the two comes first
            fresh.append(seconds(live, attacker, other))
            victims.append(seconds(live, attacker, sent))
        else:
            victims.append(seconds(live, attacker, sent))
            fresh.append(seconds(live, attacker, other))
    return mann_whitney_p(victims, fresh)


def test_another_tenant_cannot_see_a_prompt_by_timing(live_server: LiveServer) -> None:
    seconds(live_server, ATTACKER, "warm up the attacker's path")
    p = audit(live_server, ATTACKER, seed=1)
    if p <= ALPHA:  # 1 run in 100 by chance: measure once more, independently
        p = audit(live_server, ATTACKER, seed=2)
    assert p > ALPHA, f"tenant B can tell tenant A's prompts by TTFT (p={p:.2g})"


def test_the_same_tenant_sees_its_own_cache_hit(live_server: LiveServer) -> None:
    p = audit(live_server, VICTIM, seed=3)
    assert p < ALPHA, f"the audit cannot detect even a same-tenant prefix hit (p={p:.2g})"
