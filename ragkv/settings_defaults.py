"""Default category policies and classifier examples for the semantic cache (plain data).

Imports nothing from ragkv so that `ragkv.settings` can use it for its defaults. Thresholds
are raw cosine similarities of L2-normalised MiniLM embeddings, chosen from the QQP dev pairs
(`benchmarks/bench_semantic_cache.py`): `general` sits where the false-hit rate on pairs that
ask different things is 2-3% with the guard; stricter categories sit higher; `floor` is how
far load adaptation may relax each one.
"""

from __future__ import annotations

from typing import Any

DAY_S = 86_400.0


def default_policies() -> dict[str, dict[str, Any]]:
    """Fresh dict of category name -> policy fields (see `CategoryPolicy` in settings)."""
    return {
        "general": {
            "threshold": 0.93,
            "floor": 0.89,
            "ttl_s": 7 * DAY_S,
            "max_entries": 200_000,
            "max_bytes": 512 * 1024 * 1024,
            "cacheable": True,
            "eviction": "lfu",
            "guard": True,
        },
        "faq": {
            "threshold": 0.88,
            "floor": 0.85,
            "ttl_s": 30 * DAY_S,
            "max_entries": 100_000,
            "max_bytes": 256 * 1024 * 1024,
            "cacheable": True,
            "eviction": "lfu",
            "guard": True,
        },
        "code": {
            "threshold": 0.97,
            "floor": 0.95,
            "ttl_s": DAY_S,
            "max_entries": 20_000,
            "max_bytes": 128 * 1024 * 1024,
            "cacheable": True,
            "eviction": "lru",
            "guard": True,
        },
        "time_sensitive": {
            "threshold": 0.95,
            "floor": 0.93,
            "ttl_s": 300.0,
            "max_entries": 10_000,
            "max_bytes": 32 * 1024 * 1024,
            "cacheable": True,
            "eviction": "lru",
            "guard": True,
        },
        "math": {
            "threshold": 0.96,
            "floor": 0.94,
            "ttl_s": 30 * DAY_S,
            "max_entries": 20_000,
            "max_bytes": 64 * 1024 * 1024,
            "cacheable": True,
            "eviction": "lfu",
            "guard": True,
        },
        "personal": {
            "threshold": 0.99,
            "floor": 0.99,
            "ttl_s": 600.0,
            "max_entries": 1_000,
            "max_bytes": 8 * 1024 * 1024,
            "cacheable": False,
            "eviction": "lru",
            "guard": True,
        },
    }


def default_examples() -> dict[str, list[str]]:
    """Fresh dict of category name -> example questions for the nearest-centroid classifier."""
    return {
        "faq": [
            "How do I reset my password?",
            "How can I cancel my subscription?",
            "What are your opening hours?",
            "How do I contact customer support?",
            "What is your refund policy?",
            "How long does shipping take?",
            "Do you offer a free trial?",
            "Which payment methods do you accept?",
        ],
        "code": [
            "How do I reverse a list in Python?",
            "Why does my JavaScript function return undefined?",
            "How to fix a segmentation fault in C++?",
            "Write a SQL query to find duplicate rows",
            "What is the difference between a process and a thread?",
            "How do I merge two branches in git?",
            "How to read a file line by line in Java?",
            "What does this error mean: TypeError: 'NoneType' object is not subscriptable",
        ],
        "time_sensitive": [
            "What is the weather today?",
            "What is the current price of Bitcoin?",
            "Who won the game last night?",
            "What are the latest news headlines?",
            "What is the stock price of Apple right now?",
            "Is the store open now?",
            "What time is it in Tokyo?",
            "What is the exchange rate of the dollar today?",
        ],
        "math": [
            "What is 15% of 240?",
            "Solve for x: 2x + 3 = 11",
            "What is the derivative of x^2?",
            "What is the square root of 144?",
            "Calculate the area of a circle with radius 5",
            "What is the integral of sin(x)?",
            "How many seconds are in 3 hours?",
            "What is 7 times 8?",
        ],
        "personal": [
            "What is my account balance?",
            "When is my next appointment?",
            "What did I order last week?",
            "Where is my package right now?",
            "Show me my recent transactions",
            "What is the status of my order?",
            "What did my doctor say about my test results?",
            "How many vacation days do I have left?",
        ],
    }
