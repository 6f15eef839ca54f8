"""How a projection `x @ W` runs on this machine: the GEMV layout of one-row products and the
library of products with several rows.

Every projection is stored once, transposed and contiguous, `[in, out]`. A decode step of one
sequence is GEMVs, bound by how fast the cores stream weights: on a multi-threaded CPU the
matrix is read as `blocks` column blocks (a strided view, no copy) multiplied as one batched
GEMM, so that each core streams its own block. Products with more rows (batched decode,
prefill) are compute-bound, and there torch's BLAS (MKL) was 1.3-2x slower on an AMD EPYC than
oneDNN, the library torch's own compiler uses for CPU linear layers (16 rows: 0.32 vs 0.67 ms
for a gate/up projection; a 16-row LM head 12 vs 20 ms; `benchmarks/README.md`, "oneDNN").
oneDNN takes the `[out, in]` view of the same storage. Where it starts to pay is a property
of the CPU, so `ragkv.engine.calibrate` times it at start (`model.batched_gemm = auto`).
Every path computes the same products up to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

# Past this many rows a GEMM is compute-bound and one multi-threaded call on the whole
# matrix beats the column blocks (which each run on one core).
BLOCKED_GEMM_MAX_ROWS = 512


def onednn_available() -> bool:
    """True where torch was built with oneDNN and exposes its linear op and weight packing (x86
    and Arm wheels)."""
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_linear_pointwise")
        and hasattr(mkldnn, "_reorder_linear_weight")
    )


def onednn_bf16_available() -> bool:
    """True where oneDNN runs bfloat16 products natively (AVX512-BF16, AMX, or Arm's BF16)."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# oneDNN serves float32 weights, and bfloat16 ones where the CPU has bfloat16 instructions;
# float16 has no oneDNN matmul on CPUs without AVX512-FP16 (it raised "could not create a
# primitive descriptor" on an AMD EPYC).
ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if onednn_bf16_available() else (torch.float32,)


@dataclass(frozen=True)
class Gemm:
    """The products of one model: `blocks` column blocks for GEMV-shaped products (1: the
    whole matrix), oneDNN from `onednn_min_rows` rows on (None: never)."""

    blocks: int = 1
    onednn_min_rows: int | None = None

    def uses_onednn(self, rows: int, weight_t: torch.Tensor) -> bool:
        """Whether a product of `rows` rows with `weight_t` runs on oneDNN."""
        return (
            self.onednn_min_rows is not None
            and rows >= self.onednn_min_rows
            and weight_t.dtype in ONEDNN_DTYPES
            and weight_t.device.type == "cpu"
        )

    def matmul(
        self,
        x: torch.Tensor,
        weight_t: torch.Tensor,
        bias: torch.Tensor | None = None,
        packed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x @ weight_t (+ bias)` for an `[in, out]` weight (or a transposed view of an
        `[out, in]` one), computed in the weight's dtype and answered in `x`'s. `packed`:
        oneDNN's own copy of the weight (`OneDNNPacks`), used where oneDNN takes the product."""
        rows = x.shape[0]
        x_cast = x.to(weight_t.dtype)
        if self.uses_onednn(rows, weight_t):
            weight = weight_t.t() if packed is None else packed
            out = torch.ops.mkldnn._linear_pointwise(
                x_cast.contiguous(), weight, bias, "none", [], ""
            )
            return out.to(x.dtype)
        blocked = self.column_blocks(weight_t) if rows <= BLOCKED_GEMM_MAX_ROWS else None
        if blocked is None:
            out = x_cast @ weight_t
        else:
            out = torch.bmm(x_cast.expand(self.blocks, -1, -1), blocked)
            out = out.transpose(0, 1).reshape(rows, -1)
        if bias is not None:
            out += bias
        return out.to(x.dtype)

    def column_blocks(self, weight_t: torch.Tensor) -> torch.Tensor | None:
        """`weight_t [in, out]` viewed as `[blocks, in, out/blocks]` (no copy), or None where
        it is kept whole: one block, columns that do not divide, or a transposed view."""
        in_features, out_features = weight_t.shape
        if self.blocks <= 1 or out_features % self.blocks or not weight_t.is_contiguous():
            return None
        return weight_t.view(in_features, self.blocks, -1).permute(1, 0, 2)


# The row count oneDNN lays packed weights out for: a batched decode step. Other counts use
# the same copy (prefill gained too, by less).
PACK_ROWS = 16


class OneDNNPacks:
    """oneDNN's blocked copies of a model's weights (`torch.ops.mkldnn._reorder_linear_weight`,
    as torch's compiler packs linear layers), by weight. Given a plain `[out, in]` matrix,
    oneDNN lays it out again on every call: on an AMD EPYC, 16-row products ran 1.3-2.5x
    faster on the packed copy (bfloat16 gate/up 0.24 -> 0.16 ms, float32 LM head 10.8 ->
    6.3 ms) with identical results. A pack costs the weight's size in memory again."""

    def __init__(self, weights: Iterable[torch.Tensor] = ()) -> None:
        # id -> (the weight, its pack); holding the weight keeps its id from being reused
        self._packs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for weight in weights:
            self.add(weight)

    def add(self, weight_t: torch.Tensor) -> None:
        """Pack `weight_t` (`[in, out]`, or the transposed view of an `[out, in]` copy)."""
        pack = torch.ops.mkldnn._reorder_linear_weight(weight_t.t().contiguous(), PACK_ROWS)
        self._packs[id(weight_t)] = (weight_t, pack)

    def get(self, weight_t: torch.Tensor) -> torch.Tensor | None:
        """The pack of `weight_t`, None when it has none."""
        entry = self._packs.get(id(weight_t))
        return entry[1] if entry is not None and entry[0] is weight_t else None

    def __len__(self) -> int:
        return len(self._packs)
