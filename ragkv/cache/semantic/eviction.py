"""Quota enforcement for one tenant and category: which entries to evict for incoming ones."""

from __future__ import annotations

from ragkv.cache.semantic.store import EntryMeta
from ragkv.settings import CategoryPolicy


def choose_victims(
    meta: dict[int, EntryMeta],
    live_bytes: int,
    policy: CategoryPolicy,
    incoming_entries: int,
    incoming_bytes: int,
    replaced: set[int],
    now: float,
) -> list[int]:
    """Entry ids of `meta` (the tenant's entries of the category) to evict so that they fit
    `policy.max_entries` and `max_bytes` after `incoming_*` arrive and `replaced` ids leave.
    Expired entries go first, then the least recently used (`lru`) or least frequently used
    (`lfu`, ties by age).
    """
    kept_bytes = live_bytes - sum(meta[i].bytes for i in replaced if i in meta)
    over_entries = len(meta) - len(replaced) + incoming_entries - policy.max_entries
    over_bytes = kept_bytes + incoming_bytes - policy.max_bytes
    if over_entries <= 0 and over_bytes <= 0:
        return []
    if over_entries > 0:
        # Evict 1% of the quota at once so the sort below is amortised over many inserts.
        over_entries = max(over_entries, min(policy.max_entries // 100, len(meta)))

    def order(item: tuple[int, EntryMeta]) -> tuple[float, ...]:
        entry_id, entry = item
        alive = 0.0 if entry.expires_at <= now else 1.0
        if policy.eviction == "lfu":
            return (alive, entry.hits, entry.last_used, entry_id)
        return (alive, entry.last_used, entry_id)

    victims: list[int] = []
    candidates = ((i, m) for i, m in meta.items() if i not in replaced)
    for entry_id, entry in sorted(candidates, key=order):
        if over_entries <= 0 and over_bytes <= 0:
            break
        victims.append(entry_id)
        over_entries -= 1
        over_bytes -= entry.bytes
    return victims
