"""The fleet's aggregate of per-replica cache statistics: counts add up (nested groups too),
the model's constants are not multiplied by the replica count, the hit rate is recomputed."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'ragkv[ray]')")

from ragkv.cluster.fleet import summed  # noqa: E402


def replica(prompt: int, cached: int, hits: int) -> dict:
    return {
        "prompt_tokens": prompt, "cached_tokens": cached, "token_hit_rate": cached / prompt,
        "page_size": 16, "bytes_per_page": 368640, "pool_pages": 100,
        "tool_pins": {"made": 1, "hit": hits, "max_pages": 10},
        "cost_model": {"prefill_tokens_s": 900.0},
    }  # fmt: skip


def test_counts_add_constants_stay_and_the_rate_is_recomputed() -> None:
    per_replica = {"engine-0": replica(100, 50, 1), "engine-1": replica(300, 0, 0)}
    total = summed(per_replica)
    assert total["prompt_tokens"] == 400 and total["cached_tokens"] == 50
    assert total["token_hit_rate"] == 50 / 400
    assert total["page_size"] == 16 and total["bytes_per_page"] == 368640
    assert total["pool_pages"] == 200
    assert total["tool_pins"] == {"made": 2, "hit": 1, "max_pages": 20}
    assert "cost_model" not in total  # a rate per replica, shown under `replicas` only
    assert total["replicas"] is per_replica


def test_a_replica_without_figures_is_skipped() -> None:
    total = summed({"engine-0": None, "engine-1": replica(10, 10, 0)})
    assert total["prompt_tokens"] == 10 and total["token_hit_rate"] == 1.0
