"""The SIGKILL campaign, reduced: a real `ragkv serve` (a 2-layer random Llama with SmolLM2's
tokenizer, so a restart costs the process start, not a model load) is killed twice while
ingesting documents, writing semantic-cache entries, writing chunk KV to disk and deleting
collections all at once, the kill point drawn in a delete, then in a chat request's chunk-KV
writes (ingest and cache writes run back to back: a kill lands in one of them anyway). After
every restart each acknowledged write is there and nothing half-written is visible (see
tests/reliability/campaign.py); `benchmarks/crash_campaign.py` runs 20 kills per scenario."""

from __future__ import annotations

import pytest

from tests.reliability.campaign import CampaignResult, run_campaign
from tests.reliability.serve import build_small_model

ROUNDS = 2  # every kill hits all four loads; each start costs ~10 s on a busy 2-core machine
LEADS = ("delete", "chunk_kv", "ingest", "semantic")  # whose write each kill point is drawn in
SEED = 16


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> CampaignResult:
    """The reduced campaign, run once for the module's checks."""
    model_dir = build_small_model(tmp_path_factory.mktemp("crash-model"))
    root = tmp_path_factory.mktemp("crash-campaign")
    return run_campaign(root, ROUNDS, SEED, model_dir, LEADS, together=True)


@pytest.mark.parametrize("name", LEADS)
def test_every_acknowledged_write_survives_sigkill(campaign: CampaignResult, name: str) -> None:
    (result,) = [s for s in campaign.scenarios if s.name == name]
    assert result.kills == ROUNDS
    assert result.tally.violations == []
    assert result.tally.acknowledged > 0
    assert result.tally.verified == result.tally.acknowledged


def test_restarts_take_their_usual_time_and_a_clean_stop_saves_consistent_indexes(
    campaign: CampaignResult,
) -> None:
    assert campaign.baseline_startup_s < 120
    assert [len(s.kill_after_ms) for s in campaign.scenarios] == [1, 1, 0, 0]
    for result in campaign.scenarios:
        assert max(result.startup_s) <= campaign.startup_bound_s
    assert campaign.final_violations == []
