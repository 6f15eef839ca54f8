"""Paged KV pool: `[num_layers, 2, num_pages, page_size, num_kv_heads, head_dim]`, ref-counted.

A page is free when its ref count is 0. Sequences and the radix tree each hold references;
a page returns to the free list when the last reference is dropped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import torch

from ragkv.engine.config import ModelConfig
from ragkv.errors import ModelError


class OutOfPages(Exception):
    """The pool has fewer free pages than asked for (the scheduler evicts or preempts)."""


class KVPool:
    """Fixed pool of KV pages with reference counts and CSR page tables."""

    def __init__(
        self,
        config: ModelConfig,
        num_pages: int,
        page_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_pages < 1 or page_size < 1:
            raise ModelError("the KV pool needs at least one page of at least one token")
        self.page_size = page_size
        self.num_pages = num_pages
        self.kv = torch.zeros(
            (config.num_layers, 2, num_pages, page_size, config.num_kv_heads, config.head_dim),
            dtype=dtype,
            device=device,
        )
        # Per layer: the K and V caches `[pages, page_size, KH, D]` and their flat slot
        # views `[slots, KH, D]`, made once (a decode step asks for them in every layer,
        # where a view made per call costs as much as the one-token write itself).
        self._layer_views = [
            (layer[0], layer[1], layer[0].flatten(0, 1), layer[1].flatten(0, 1))
            for layer in self.kv
        ]
        self.ref_counts = [0] * num_pages
        # A min-heap: pages are handed out lowest id first, so a sequence's pages tend to be
        # consecutive, and attention reads consecutive pages as a view of the pool instead of
        # gathering them (`plan_paged_attention`).
        self._free = list(range(num_pages))

    @classmethod
    def of_size(
        cls, config: ModelConfig, size_mb: int, page_size: int, dtype: torch.dtype, device
    ) -> KVPool:
        """A pool of as many pages as fit in `size_mb` MiB (one page at least)."""
        bits = torch.finfo(dtype).bits
        page_bytes = 2 * config.num_layers * page_size * config.kv_size * bits // 8
        num_pages = max(1, size_mb * 1024 * 1024 // page_bytes)
        return cls(config, num_pages, page_size, dtype, device)

    @property
    def num_free(self) -> int:
        """Pages with no reference."""
        return len(self._free)

    @property
    def bytes_per_page(self) -> int:
        """Bytes of K and V of one page across all layers."""
        return self.kv[:, :, 0].numel() * self.kv.element_size()

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold `num_tokens`."""
        return -(-num_tokens // self.page_size)

    def alloc(self, num_pages: int) -> list[int]:
        """Take `num_pages` free pages, each with ref count 1. Raises `OutOfPages`."""
        if num_pages > len(self._free):
            raise OutOfPages(f"need {num_pages} pages, {len(self._free)} free")
        pages = [heapq.heappop(self._free) for _ in range(num_pages)]
        for page in pages:
            self.ref_counts[page] = 1
        return pages

    def incref(self, pages: Iterable[int]) -> None:
        """Add a reference to each page (they must be in use)."""
        for page in pages:
            if self.ref_counts[page] <= 0:
                raise ModelError(f"page {page} is free; cannot add a reference")
            self.ref_counts[page] += 1

    def decref(self, pages: Iterable[int]) -> None:
        """Drop a reference from each page; pages reaching 0 become free."""
        for page in pages:
            if self.ref_counts[page] <= 0:
                raise ModelError(f"page {page} is already free")
            self.ref_counts[page] -= 1
            if self.ref_counts[page] == 0:
                heapq.heappush(self._free, page)

    def slots(self, pages: Sequence[int], start: int, end: int) -> torch.Tensor:
        """Flat slot ids (page * page_size + offset) of token positions [start, end)."""
        positions = torch.arange(start, end)
        table = torch.tensor(pages, dtype=torch.long)
        return table[positions // self.page_size] * self.page_size + positions % self.page_size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store `k, v: [T, num_kv_heads, head_dim]` of one layer at `slots: [T]`."""
        _, _, k_flat, v_flat = self._layer_views[layer]
        k_flat.index_copy_(0, slots, k)
        v_flat.index_copy_(0, slots, v)

    def write_all(self, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Store every layer's K and V at once: `kv: [layers, 2, T, num_kv_heads, head_dim]`."""
        flat = self.kv.view(*self.kv.shape[:2], -1, *self.kv.shape[-2:])
        flat.index_copy_(2, slots.to(flat.device), kv.to(flat.dtype))

    def read_all(self, slots: torch.Tensor) -> torch.Tensor:
        """Every layer's K and V at `slots: [T]` -> `[layers, 2, T, num_kv_heads, head_dim]`."""
        flat = self.kv.view(*self.kv.shape[:2], -1, *self.kv.shape[-2:])
        return flat.index_select(2, slots.to(flat.device))

    def layer_caches(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(k_cache, v_cache)`, each `[num_pages, page_size, num_kv_heads, head_dim]`."""
        k_cache, v_cache, _, _ = self._layer_views[layer]
        return k_cache, v_cache

    def flat_caches(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(k_flat, v_flat)`: the layer's caches by slot, each `[slots, num_kv_heads, head_dim]`
        (views of the pool: writes through them land in it)."""
        _, _, k_flat, v_flat = self._layer_views[layer]
        return k_flat, v_flat


def page_table_csr(tables: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR form (`kv_indptr [B+1]`, `kv_indices [sum pages]`) of per-sequence page lists."""
    indptr = [0]
    for table in tables:
        indptr.append(indptr[-1] + len(table))
    indices = [page for table in tables for page in table]
    return torch.tensor(indptr, dtype=torch.long), torch.tensor(indices, dtype=torch.long)
