"""Radix prefix cache over token pages (SGLang RadixAttention, page-granular).

Each node holds one full page of tokens and the KV page id that stores them; children are
keyed by their page's token tuple. One tree per namespace (tenant + model), so tenants never
share prefixes. The tree holds references to page ids; it never frees memory itself: the
ids returned by `evict`/`flush` are handed back by the caller to its pool. Pure data
structure: no tensors, no model.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from ragkv.cache.kv.digest import ROOT_DIGEST, chain_digest


class RadixNode:
    """One cached page: its tokens, page id, children, lock count, LRU stamp, pin expiry, and
    whether its KV is approximate (came from a blended prefill, or attended to KV that did)."""

    __slots__ = (
        "key", "page_id", "parent", "children", "lock_ref", "last_access", "pin_until", "approx"
    )  # fmt: skip

    def __init__(
        self, key: tuple[int, ...], page_id: int, parent: RadixNode | None, approx: bool = False
    ) -> None:
        self.key = key
        self.page_id = page_id
        self.parent = parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.lock_ref = 0
        self.last_access = 0.0
        self.pin_until = 0.0
        self.approx = approx


class MatchResult(NamedTuple):
    """Longest cached prefix: its page ids, token count, the deepest node (lock it), and the
    first token whose KV is approximate (None: all exact)."""

    page_ids: list[int]
    num_tokens: int
    node: RadixNode
    approx_from: int | None = None


class InsertResult(NamedTuple):
    """`new_page_ids`: pages the tree now references (the caller adds a pool reference)."""

    num_cached_tokens: int
    new_page_ids: list[int]


class SizeInfo(NamedTuple):
    """Pages held by the tree, split by whether eviction may take them."""

    total_pages: int
    evictable_pages: int
    locked_pages: int
    pinned_pages: int
    approx_pages: int = 0


class RadixCache:
    """Page-granular radix tree per namespace with lock refs, LRU eviction and TTL pins."""

    def __init__(self, page_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.page_size = page_size
        self.clock = clock
        self._roots: dict[str, RadixNode] = {}
        self._num_pages = 0
        # Asked before eviction takes a page (see `evict`): True when it pinned the page (or
        # changed other pins); the tool pins made on demand (`engine/tool_pins.py`).
        self.rescue: Callable[[RadixNode], bool] | None = None

    def namespaces(self) -> list[str]:
        """Namespaces that have (or had) a tree."""
        return list(self._roots)

    def _root(self, namespace: str) -> RadixNode:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = RadixNode((), -1, None)
        return root

    def _pages(self, token_ids: Sequence[int]) -> list[tuple[int, ...]]:
        full = len(token_ids) // self.page_size * self.page_size
        size = self.page_size
        return [tuple(token_ids[i : i + size]) for i in range(0, full, size)]

    def match_prefix(
        self,
        namespace: str,
        token_ids: Sequence[int],
        exact_only: bool = False,
        touch: bool = True,
    ) -> MatchResult:
        """Longest cached prefix of `token_ids` in whole pages (with `exact_only`, it stops
        before the first approximate page). Touches LRU stamps only, and only with `touch`
        (a use; pins and hints look pages up without using them).

        The page ids are safe to read only while the caller holds them (a lock on `node`
        or its own pool references).
        """
        node = self._root(namespace)
        now = self.clock()
        page_ids: list[int] = []
        approx_from = None
        for key in self._pages(token_ids):
            child = node.children.get(key)
            if child is None or (exact_only and child.approx):
                break
            if child.approx and approx_from is None:
                approx_from = len(page_ids) * self.page_size
            if touch:
                child.last_access = now
            page_ids.append(child.page_id)
            node = child
        return MatchResult(page_ids, len(page_ids) * self.page_size, node, approx_from)

    def insert_prefix(
        self,
        namespace: str,
        token_ids: Sequence[int],
        page_ids: Sequence[int],
        approx_from: int | None = None,
    ) -> InsertResult:
        """Add the full pages of `token_ids` (KV in `page_ids`, one per page) to the tree;
        the pages holding token `approx_from` and after are marked approximate.

        Pages already cached keep their old page id and label (the caller's duplicate stays
        the caller's); `new_page_ids` lists the ids the tree took over.
        """
        keys = self._pages(token_ids)
        if len(page_ids) < len(keys):
            raise ValueError(f"{len(keys)} full pages of tokens but {len(page_ids)} page ids")
        node = self._root(namespace)
        now = self.clock()
        new_pages: list[int] = []
        first_approx = len(keys) if approx_from is None else approx_from // self.page_size
        for index, (key, page_id) in enumerate(zip(keys, page_ids, strict=False)):
            child = node.children.get(key)
            if child is None:
                approx = index >= first_approx or node.approx  # after approximate, approximate
                child = node.children[key] = RadixNode(key, page_id, node, approx)
                new_pages.append(page_id)
                self._num_pages += 1
            child.last_access = now
            node = child
        return InsertResult(len(keys) * self.page_size, new_pages)

    def lock(self, node: RadixNode) -> None:
        """Protect `node` and its ancestors from eviction until `unlock`."""
        while node.parent is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """Release a `lock` on `node`."""
        while node.parent is not None:
            if node.lock_ref <= 0:
                raise ValueError("unlock without a matching lock")
            node.lock_ref -= 1
            node = node.parent

    def pin(self, namespace: str, token_ids: Sequence[int], ttl_s: float) -> int:
        """Keep the cached prefix of `token_ids` from eviction for `ttl_s` seconds.

        Returns the number of tokens pinned (whole pages already cached). A pin is not a use:
        the pages' LRU stamps (and `keep_until` hints) stay as they were, so pages a pin
        lets go of are ranked by their last use, not by when they were pinned.
        """
        match = self.match_prefix(namespace, token_ids, touch=False)
        until = self.clock() + ttl_s
        node = match.node
        while node.parent is not None:
            node.pin_until = max(node.pin_until, until)
            node = node.parent
        return match.num_tokens

    def keep_until(self, namespace: str, token_ids: Sequence[int], until: float) -> int:
        """Rank the cached prefix of `token_ids` for eviction as if it were used at `until`
        (later than now: a hint that it will be used again by then). Its pages stay
        evictable; only pages without such a hint, or with an earlier one, go before them.
        The next match resets the stamps to that time. Returns the tokens covered."""
        match = self.match_prefix(namespace, token_ids, touch=False)
        node = match.node
        while node.parent is not None:
            node.last_access = max(node.last_access, until)
            node = node.parent
        return match.num_tokens

    def unpin(self, namespace: str, token_ids: Sequence[int]) -> None:
        """End a pin early (e.g. the agent session closed)."""
        node = self.match_prefix(namespace, token_ids, touch=False).node
        while node.parent is not None:
            node.pin_until = 0.0
            node = node.parent

    def unpin_all(self) -> None:
        """End every pin (used only when the pool would otherwise deadlock)."""
        for node in self._all_nodes():
            node.pin_until = 0.0

    def _evictable(self, node: RadixNode, now: float) -> bool:
        return not node.children and node.lock_ref == 0 and node.pin_until <= now

    def evict(self, num_pages: int, rescue: bool = True) -> list[int]:
        """Remove up to `num_pages` least recently used unlocked, unpinned leaves.

        Each page is offered to `self.rescue` first (with `rescue`): a page it pins stays,
        and eviction goes on with the others. Returns the page ids the tree let go of (the
        caller drops their pool reference).
        """
        now = self.clock()
        counter = itertools.count()
        heap = self._eviction_heap(now, counter)
        freed: list[int] = []
        while heap and len(freed) < num_pages:
            _, _, node = heapq.heappop(heap)
            if not self._evictable(node, now):
                continue  # pinned by a rescue since it was queued
            if rescue and self.rescue is not None and self.rescue(node):
                # A rescue pins at most once per waiting agent, and may have given up
                # pages of other pins: queue again.
                heap = self._eviction_heap(now, counter)
                continue
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            self._num_pages -= 1
            freed.append(node.page_id)
            if parent.parent is not None and self._evictable(parent, now):
                heapq.heappush(heap, (parent.last_access, next(counter), parent))
        return freed

    def _eviction_heap(
        self, now: float, counter: Iterator[int]
    ) -> list[tuple[float, int, RadixNode]]:
        heap = [
            (node.last_access, next(counter), node)
            for node in self._all_nodes()
            if self._evictable(node, now)
        ]
        heapq.heapify(heap)
        return heap

    def path_of(self, node: RadixNode) -> tuple[str, tuple[int, ...]]:
        """The namespace and token prefix that end with `node`'s page."""
        keys: list[tuple[int, ...]] = []
        while node.parent is not None:
            keys.append(node.key)
            node = node.parent
        namespace = next(name for name, root in self._roots.items() if root is node)
        return namespace, tuple(token for key in reversed(keys) for token in key)

    def flush(self, namespace: str | None = None) -> list[int]:
        """Drop every unlocked node (pins included) of `namespace`, or of all namespaces."""
        freed: list[int] = []
        if namespace is None:
            roots = list(self._roots.values())
        else:
            roots = [self._roots[namespace]] if namespace in self._roots else []
        for root in roots:
            self._flush_below(root, freed)
        self._num_pages -= len(freed)
        return freed

    def _flush_below(self, node: RadixNode, freed: list[int]) -> None:
        for key, child in list(node.children.items()):
            self._flush_below(child, freed)
            if child.lock_ref == 0 and not child.children:
                del node.children[key]
                freed.append(child.page_id)

    def _all_nodes(self) -> list[RadixNode]:
        return list(self._iter_nodes())

    def _iter_nodes(self) -> Iterator[RadixNode]:
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            for child in node.children.values():
                yield child
                stack.append(child)

    def page_digests(self, namespace: str, limit: int) -> list[int]:
        """Chained digests (`cache/kv/digest.py`) of the cached pages of `namespace`, most
        recently used subtrees first, at most `limit`: what a router compares a prompt's
        digests with. Reads only (no LRU touch)."""
        root = self._roots.get(namespace)
        if root is None:
            return []
        digests: list[int] = []
        stack = [(ROOT_DIGEST, root)]
        while stack and len(digests) < limit:
            parent, node = stack.pop()
            children = sorted(node.children.values(), key=lambda child: child.last_access)
            for child in children:  # the most recent is popped first
                stack.append((chain_digest(parent, child.key), child))
            if node is not root:
                digests.append(parent)
        return digests

    def size_info(self) -> SizeInfo:
        """Counts of pages: all, evictable now (unlocked and unpinned), locked, pinned, and
        approximate (from blends)."""
        now = self.clock()
        nodes = self._all_nodes()
        locked = sum(1 for n in nodes if n.lock_ref > 0)
        pinned = sum(1 for n in nodes if n.lock_ref == 0 and n.pin_until > now)
        approx = sum(1 for n in nodes if n.approx)
        return SizeInfo(len(nodes), len(nodes) - locked - pinned, locked, pinned, approx)

    def check_integrity(self) -> None:
        """Raise AssertionError if counts, parent links, lock refs or page ids disagree."""
        nodes = self._all_nodes()
        assert len(nodes) == self._num_pages, "page count drifted"
        page_ids = [n.page_id for n in nodes]
        assert len(page_ids) == len(set(page_ids)), "a page id appears twice"
        for node in nodes:
            assert node.parent is not None and node.parent.children[node.key] is node
            assert len(node.key) == self.page_size
            assert not node.parent.approx or node.approx, "exact KV below approximate KV"
            child_locks = sum(c.lock_ref for c in node.children.values())
            assert node.lock_ref >= child_locks, "a child is locked more than its parent"
