"""Verified mode (in the spirit of vCache): thresholds learned from feedback under an error bound.

Each served hit may be reported correct or wrong with its similarity. For a set of such
observations, the learned threshold is the lowest `t >= floor` such that among observations
with similarity >= t there are at least `min_observations` and the posterior-mean error rate
with a uniform prior, `(wrong + 1) / (n + 2)`, is <= `delta`. An entry uses its own
observations when they suffice, else its category's; with too little evidence the category's
configured threshold applies, raised above any similarity at which that entry was wrong.
Observations are exported to / loaded from a JSON-able dict, so they survive restarts; each
entry and category keeps its latest `MAX_OBSERVATIONS`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

MAX_OBSERVATIONS = 10_000
VERIFIED_STATE = "verified_observations"  # the store's state key of the observations


class VerifiedThresholds:
    """Per-entry and per-category thresholds learned from (similarity, correct) feedback."""

    def __init__(self, delta: float, min_observations: int) -> None:
        self.delta = delta
        self.min_observations = min_observations
        self._lock = threading.Lock()
        self._by_entry: dict[int, list[tuple[float, bool]]] = defaultdict(list)
        self._by_category: dict[str, list[tuple[float, bool]]] = defaultdict(list)

    def observe(self, entry_id: int, category: str, similarity: float, correct: bool) -> None:
        """Record that a hit on `entry_id` at `similarity` was `correct` (or not)."""
        with self._lock:
            for observations in (self._by_entry[entry_id], self._by_category[category]):
                observations.append((similarity, correct))
                del observations[:-MAX_OBSERVATIONS]

    def forget_entry(self, entry_id: int) -> None:
        """Drop an entry's observations (the entry was deleted); its category keeps them."""
        with self._lock:
            self._by_entry.pop(entry_id, None)

    def learned(self, observations: list[tuple[float, bool]], floor: float) -> float | None:
        """Lowest threshold >= floor meeting the error bound, or None without enough evidence."""
        ordered = sorted(observations, reverse=True)
        wrong = 0
        best: float | None = None
        for count, (similarity, correct) in enumerate(ordered, start=1):
            wrong += not correct
            if similarity < floor:
                break
            # Only cut between distinct similarities: ties must fall on the same side.
            if count < len(ordered) and ordered[count][0] == similarity:
                continue
            if count >= self.min_observations and (wrong + 1) / (count + 2) <= self.delta:
                best = similarity
        return best

    def threshold(self, entry_id: int, category: str, configured: float, floor: float) -> float:
        """The threshold a lookup must reach to be served from `entry_id`."""
        with self._lock:
            own = list(self._by_entry.get(entry_id, ()))
            shared = list(self._by_category.get(category, ()))
        for observations in (own, shared):
            learned = self.learned(observations, floor)
            if learned is not None:
                return max(floor, learned)
        wrong_at = [similarity for similarity, correct in own if not correct]
        return max([configured, *(s + 1e-6 for s in wrong_at)])

    def export(self) -> dict[str, Any]:
        """All observations as plain JSON-able data (for the store)."""
        with self._lock:
            return {
                "entries": {str(k): [list(o) for o in v] for k, v in self._by_entry.items()},
                "categories": {k: [list(o) for o in v] for k, v in self._by_category.items()},
            }

    def load(self, data: dict[str, Any] | None) -> None:
        """Replace the observations with `export()` output (None or malformed: keep empty)."""
        if not isinstance(data, dict):
            return
        try:
            entries = {
                int(k): [(float(s), bool(c)) for s, c in v]
                for k, v in data.get("entries", {}).items()
            }
            categories = {
                str(k): [(float(s), bool(c)) for s, c in v]
                for k, v in data.get("categories", {}).items()
            }
        except (TypeError, ValueError):
            return
        with self._lock:
            self._by_entry = defaultdict(list, entries)
            self._by_category = defaultdict(list, categories)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per category: number of observations and of wrong ones (for stats)."""
        with self._lock:
            return {
                category: {"observations": len(obs), "wrong": sum(not ok for _, ok in obs)}
                for category, obs in self._by_category.items()
            }
