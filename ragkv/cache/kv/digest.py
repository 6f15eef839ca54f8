"""Content digests of token pages, chained from the first page (vLLM's block hash): the same
token prefix gives the same digests in every process, so a router can compare the prefixes
that engine replicas hold without seeing their trees. Pure functions, no state."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

ROOT_DIGEST = 0  # the digest "before" the first page


def chain_digest(parent: int, page: Sequence[int]) -> int:
    """The digest of `page` (one page of token ids) after the pages whose digest is `parent`."""
    data = parent.to_bytes(8, "little") + np.asarray(page, dtype="<i4").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def page_digests(token_ids: Sequence[int], page_size: int) -> list[int]:
    """One chained digest per full page of `token_ids` (a partial last page has none)."""
    digests: list[int] = []
    parent = ROOT_DIGEST
    for start in range(0, len(token_ids) // page_size * page_size, page_size):
        parent = chain_digest(parent, token_ids[start : start + page_size])
        digests.append(parent)
    return digests
