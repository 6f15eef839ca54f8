"""Llama/Qwen2 decoder over the paged KV pool; every attention/RoPE/norm call goes through ops."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ragkv.engine.config import ModelConfig
from ragkv.engine.gemm import ONEDNN_DTYPES, Gemm, OneDNNPacks
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.native_decode import (
    NativeDecode,
    PackedLayer,
    attention_supported,
    batch_supported,
    pack_batch_layers,
)
from ragkv.engine.native_decode import supported as native_supported
from ragkv.engine.rope import rope_inv_freq
from ragkv.kernels import cpu_pointwise
from ragkv.kernels.backend import ops_for
from ragkv.kernels.cpu_attention import (
    native_paged_attention,
    page_slots,
    plan_native_attention,
)

# Low-precision weights pay off for GEMV-shaped decode steps only: on CPU a bf16 GEMM with
# 16 rows ran at half the fp32 speed (benchmarks/README.md), and on an AMD EPYC float16 beat
# float32 at 1-2 rows (0.78x, 0.74x the time), tied at 3 and lost from 4 (1.10x, 1.8x at
# 8), so larger batches keep dtype.
LOW_PRECISION_MAX_ROWS = 2
# Up to this many rows (or wherever oneDNN serves the product) the LM head runs on its
# transposed copy through `Gemm` (the GEMV layout); larger BLAS batches use `F.linear` on
# `[vocab, hidden]`.
LM_HEAD_GEMV_MAX_ROWS = 64
# Decode-only steps of up to this many sequences run natively on the float16 decode weights
# where the model can (`ragkv.engine.native_decode`). On an AMD EPYC (2 threads) that step led
# the torch path by 1.53x / 1.67x / 1.44x / 1.15x at 1 / 2 / 4 / 8 sequences and trailed it
# at 16 / 32 (0.91x / 0.80x: there the products are compute-bound). Larger steps run natively
# on packed bfloat16 panels where the CPU has AVX512-BF16 (`batch_panels`), else on torch.
NATIVE_MAX_ROWS = 8


@dataclass
class ForwardBatch:
    """One forward step over several sequences, each adding `q_len` tokens to its KV.

    token_ids, positions, write_slots: [T]; qo_indptr: B+1 boundaries into T;
    kv_indptr [B+1] / kv_indices: page tables; kv_lens: tokens in each sequence's KV after
    this step; logits_rows: [R] rows of T whose logits are returned.
    """

    token_ids: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    qo_indptr: list[int]
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_lens: list[int]
    logits_rows: torch.Tensor


@dataclass
class LayerWeights:
    """One decoder layer. Projections are fused and stored transposed, `[in, out]`:
    `wqkv [hidden, q+2kv]`, `wo [q, hidden]`, `w_gate_up [hidden, 2I]`, `w_down [I, hidden]`
    (read as column blocks or by oneDNN: `ragkv.engine.gemm`).

    `x @ w` on an `[in, out]` weight streams memory at twice the speed of `F.linear` on
    `[out, in]` for one-row (decode) inputs on CPU, and is as fast for prefill GEMMs.
    """

    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    ffn_norm: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


class LlamaModel:
    """Forward pass of a Llama-family model whose KV lives in a `KVPool`."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        decode_dtype: torch.dtype | None = None,
        backend: str = "torch",
        gemm: Gemm | None = None,
        batch_dtype: torch.dtype | None = None,
        native_decode: bool = False,
        native_batches: bool = True,
    ) -> None:
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.ops = ops_for(backend)

        def take(name: str) -> torch.Tensor:
            return weights[name].to(device=self.device, dtype=dtype).contiguous()

        # Default: one column block per thread on CPU, torch's BLAS for batches.
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        self.gemm = gemm or Gemm(blocks=threads)

        def t(weight: torch.Tensor) -> torch.Tensor:
            return weight.t().contiguous()

        self.embed = take("embed")
        self.lm_head = self.embed if weights["lm_head"] is weights["embed"] else take("lm_head")
        self.final_norm = take("final_norm")
        self.layers = [_layer_weights(config, i, take, t) for i in range(config.num_layers)]
        # Decode reads every weight once per token: on CPU that is memory-bound, so an optional
        # low-precision copy of the projections serves decode-only steps (prefill keeps dtype).
        self.decode_layers: list[LayerWeights] | None = None
        self.decode_dtype = dtype
        self.low_precision_fallbacks = 0  # decode steps redone in `dtype` (an overflow)
        self.decode_lm_head = self.lm_head
        # Decode-sized steps read the LM head transposed (column blocks: the fast GEMV
        # layout); larger BLAS batches keep `F.linear` on [vocab, hidden], faster there.
        self.lm_head_t = t(self.lm_head)
        if decode_dtype is not None and decode_dtype != dtype:
            self.decode_layers = [_cast_projections(layer, decode_dtype) for layer in self.layers]
            self.decode_lm_head = self.lm_head.to(decode_dtype)
            self.decode_dtype = decode_dtype
        # Batched decode steps are compute-bound on a CPU: an optional bfloat16 copy of the
        # projections serves decode-only steps of as many rows as oneDNN takes. The LM head
        # stays in `dtype` (rounding it cost bfloat16 decode its quality: 98.2%, not 99.5%).
        self.batch_layers: list[LayerWeights] | None = None
        if batch_dtype is not None and batch_dtype != dtype:
            same = self.decode_layers is not None and decode_dtype == batch_dtype
            self.batch_layers = self.decode_layers if same else [
                _cast_projections(layer, batch_dtype) for layer in self.layers
            ]  # fmt: skip
        self.inv_freq = rope_inv_freq(config).to(self.device)
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self._setup_native(native_decode, native_batches)
        self.packs = self._pack_for_onednn()
        self._native: NativeDecode | None = None
        self.native_steps = 0

    def _setup_native(self, native_decode: bool, native_batches: bool) -> None:
        """Decode-only steps as one native call (`ragkv.engine.native_decode`), bound to a
        pool on its first step; `native_decode_off` says why not. Attention and the pointwise
        ops of other steps may go native without it. Up to NATIVE_MAX_ROWS sequences the
        call reads the float16 decode weights; larger steps read the bfloat16 batch copies
        packed into panels where the CPU multiplies bfloat16, and the panels replace the
        copies (a batched decode step that needs a mask then runs in `dtype`);
        `native_batches` False keeps batched steps on the torch path."""
        self.native_decode_off = native_supported(self) if native_decode else "not asked for"
        self.batch_panels: list[PackedLayer] | None = None
        if self.native_decode_off is None and native_batches and batch_supported(self):
            self.batch_panels = pack_batch_layers(self.batch_layers)
            self.batch_layers = None
        if native_decode and attention_supported(self):  # the same signatures as the ops
            self.ops = replace(
                self.ops,
                plan_attention=plan_native_attention,
                paged_attention=native_paged_attention,
                rms_norm=cpu_pointwise.rms_norm,
                add_rms_norm=cpu_pointwise.add_rms_norm,
                silu_mul=cpu_pointwise.silu_mul,
                rotate_qk=cpu_pointwise.rotate_qk,
            )

    def _pack_for_onednn(self) -> OneDNNPacks:
        """oneDNN packs (`OneDNNPacks`) of the weights of batched decode steps: the batch
        copies, else the projections in `dtype`, and the head; none off a CPU or without
        oneDNN. The `dtype` projections are left as they are next to batch copies: they
        serve prefill there, where a pack gained ~8% on a 512-row product, not worth their
        size again in memory and ~1 s of packing at start."""
        if self.device.type != "cpu" or self.gemm.onednn_min_rows is None:
            return OneDNNPacks()
        weights = [self.lm_head_t]
        for layer in [] if self.batch_panels else self.batch_layers or self.layers:
            weights += [layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down]
        # weights in a dtype oneDNN does not multiply (float16) take the plain product
        return OneDNNPacks(w for w in weights if w.dtype in ONEDNN_DTYPES)

    def _mm(
        self, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`x @ weight_t (+ bias)` through `gemm`, on the weight's oneDNN pack if it has one."""
        return self.gemm.matmul(x, weight_t, bias, self.packs.get(weight_t))

    @property
    def column_blocks(self) -> int:
        """Column blocks of the one-row GEMV layout (1: the whole matrix)."""
        return self.gemm.blocks

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[T, head_dim]` for `positions: [T]`."""
        return self.ops.rope_cos_sin(positions, self.inv_freq, self.dtype)

    def qkv(
        self, layer: LayerWeights, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, projected, rotated `q [T, H, D]`, `k, v [T, KH, D]` of one layer."""
        c = self.config
        x = self.ops.rms_norm(hidden, layer.attn_norm, c.rms_norm_eps)
        qkv = self._mm(x, layer.wqkv, layer.bqkv)
        heads = qkv.view(-1, c.num_heads + 2 * c.num_kv_heads, c.head_dim)
        # q and k rotate in one call: a decode step is a few hundred elements per layer, where
        # the call overhead is the cost.
        q_k = self.ops.rotate_qk(heads[:, : c.num_heads + c.num_kv_heads], cos, sin)
        q, k = q_k.split([c.num_heads, c.num_kv_heads], dim=1)
        return q, k, heads[:, c.num_heads + c.num_kv_heads :]

    def mlp_residual(
        self, layer: LayerWeights, hidden: torch.Tensor, attn: torch.Tensor
    ) -> torch.Tensor:
        """`hidden + o_proj(attn)`, then the SwiGLU block with its residual."""
        mm = self._mm
        out = mm(attn.reshape(attn.shape[0], -1), layer.wo)
        hidden, x = self.ops.add_rms_norm(hidden, out, layer.ffn_norm, self.config.rms_norm_eps)
        return hidden + mm(self.ops.silu_mul(mm(x, layer.w_gate_up)), layer.w_down)

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and LM head: `[R, hidden]` -> fp32 `[R, vocab]`."""
        x = self.ops.rms_norm(hidden, self.final_norm, self.config.rms_norm_eps)
        rows = x.shape[0]
        if lm_head is None and (
            rows <= LM_HEAD_GEMV_MAX_ROWS or self.gemm.uses_onednn(rows, self.lm_head_t)
        ):
            return self._mm(x, self.lm_head_t).float()
        return _linear(x, self.lm_head if lm_head is None else lm_head).float()

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """Run all layers, writing the new tokens' KV into `pool`; fp32 logits `[R, vocab]`."""
        cos, sin = self.rope(batch.positions)
        num_tokens = batch.token_ids.shape[0]
        decode_only = num_tokens == len(batch.kv_lens)
        native_rows = num_tokens <= NATIVE_MAX_ROWS or self.batch_panels is not None
        if decode_only and self.native_decode_off is None and native_rows:
            # No overflow check: neither native product rounds activations to 16 bits, so
            # a non-finite logit there is one the float32 path computes too.
            logits = self._native_step(batch, pool, cos, sin)
            if logits is not None:
                return logits
        hidden = F.embedding(batch.token_ids, self.embed)
        plan = self.ops.plan_attention(
            batch.qo_indptr,
            batch.kv_indptr,
            batch.kv_indices,
            batch.kv_lens,
            batch.positions,
            pool.page_size,
        )
        if decode_only and num_tokens <= LOW_PRECISION_MAX_ROWS and self.decode_layers is not None:
            layers, lm_head = self.decode_layers, self.decode_lm_head
            logits = self._layers(batch, pool, plan, hidden, cos, sin, layers, lm_head)
            if bool(torch.isfinite(logits).all()):
                return logits
            # A low-precision product overflowed (fp16 ends at 65504): the step runs again
            # in `dtype`, writing the same KV slots over.
            self.low_precision_fallbacks += 1
        elif decode_only and self.batched_decode_in_low_precision(num_tokens):
            # bfloat16 keeps float32's range: no overflow to redo
            return self._layers(batch, pool, plan, hidden, cos, sin, self.batch_layers)
        return self._layers(batch, pool, plan, hidden, cos, sin, self.layers)

    def _native_step(
        self, batch: ForwardBatch, pool: KVPool, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor | None:
        """Logits of a decode-only step taken natively, None where the native call does not
        serve it (a decode that is not at its last key needs a mask: the torch path)."""
        kv_lens = torch.tensor(batch.kv_lens, dtype=torch.long)
        if not torch.equal(batch.positions.cpu(), kv_lens - 1):
            return None
        if self._native is None or self._native.pool is not pool:
            self._native = NativeDecode(self, pool, NATIVE_MAX_ROWS)
        self.native_steps += 1
        slots, starts = page_slots(batch.kv_indptr, batch.kv_indices, pool.page_size)
        logits = self._native.step(
            batch.token_ids, cos, sin, batch.write_slots, slots, starts, kv_lens
        )
        rows = batch.logits_rows
        identity = rows.shape[0] == logits.shape[0] and bool(
            (rows == torch.arange(rows.shape[0])).all()
        )
        return logits if identity else logits.index_select(0, rows)

    def batched_decode_in_low_precision(self, rows: int) -> bool:
        """Whether a decode-only step of `rows` rows runs on the `batch_layers` copies: the
        rows the one-row decode copies do not take, from where oneDNN takes the product."""
        if self.batch_layers is None:
            return False
        if self.decode_layers is not None and rows <= LOW_PRECISION_MAX_ROWS:
            return False
        return self.gemm.uses_onednn(rows, self.batch_layers[0].w_gate_up)

    def _layers(
        self,
        batch: ForwardBatch,
        pool: KVPool,
        plan: object,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layers: list[LayerWeights],
        lm_head: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder layers (`layers`: the weights in `dtype`, or a low-precision copy),
        then the logits of `batch.logits_rows` (`lm_head`: a low-precision head; None: the
        head in `dtype`)."""
        last_rows = self._last_rows_plan(batch, pool)
        for index, layer in enumerate(layers):
            q, k, v = self.qkv(layer, hidden, cos, sin)
            pool.write(index, batch.write_slots, k, v)
            k_cache, v_cache = pool.layer_caches(index)
            if last_rows is not None and index == len(layers) - 1:
                # Every row's KV is written; past it only the rows whose logits are asked
                # for feed anything (a 512-token prefill: 1 row of the last layer, not 512).
                rows = batch.logits_rows
                q, hidden, plan = q.index_select(0, rows), hidden.index_select(0, rows), last_rows
            attn = self.ops.paged_attention(q, k_cache, v_cache, plan, self.scale)
            hidden = self.mlp_residual(layer, hidden, attn)
        if last_rows is not None:
            return self.logits(hidden, lm_head)
        return self.logits(hidden.index_select(0, batch.logits_rows), lm_head)

    def _last_rows_plan(self, batch: ForwardBatch, pool: KVPool) -> object | None:
        """The attention plan of the last layer for the logits rows alone, where they are
        each sequence's last row and fewer than the step's rows (None: the layer runs whole).
        """
        sequences = len(batch.qo_indptr) - 1
        if batch.logits_rows.shape[0] != sequences or sequences == batch.token_ids.shape[0]:
            return None
        ends = torch.tensor(batch.qo_indptr[1:], device=batch.logits_rows.device) - 1
        if not torch.equal(batch.logits_rows, ends):
            return None
        return self.ops.plan_attention(
            list(range(sequences + 1)),
            batch.kv_indptr,
            batch.kv_indices,
            batch.kv_lens,
            batch.positions.index_select(0, batch.logits_rows),
            pool.page_size,
        )


def _layer_weights(config: ModelConfig, index: int, take, t) -> LayerWeights:
    """Layer `index` with fused, transposed projections (`take(name)`: a weight in the
    model's dtype and device; `t(w)`: its contiguous transpose)."""
    p = f"layers.{index}."
    bias = None
    if config.attention_bias:
        bias = torch.cat([take(p + "bq"), take(p + "bk"), take(p + "bv")])
    return LayerWeights(
        attn_norm=take(p + "attn_norm"),
        wqkv=t(torch.cat([take(p + "wq"), take(p + "wk"), take(p + "wv")])),
        bqkv=bias,
        wo=t(take(p + "wo")),
        ffn_norm=take(p + "ffn_norm"),
        w_gate_up=t(torch.cat([take(p + "w_gate"), take(p + "w_up")])),
        w_down=t(take(p + "w_down")),
    )


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """`F.linear` in the weight's dtype, answered in the activation's dtype."""
    if x.dtype == weight.dtype:
        return F.linear(x, weight, bias)
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


def _cast_projections(layer: LayerWeights, dtype: torch.dtype) -> LayerWeights:
    """A copy of `layer` whose projection weights are in `dtype` (norms stay as they are).

    The copies are stored `[out, in]` and handed out as transposed views: on CPU a bf16
    GEMV is fast in that layout and two orders of magnitude slower on `[in, out]` memory.
    """

    return replace(
        layer,
        wqkv=_low_precision(layer.wqkv, dtype),
        bqkv=None if layer.bqkv is None else layer.bqkv.to(dtype),
        wo=_low_precision(layer.wo, dtype),
        w_gate_up=_low_precision(layer.w_gate_up, dtype),
        w_down=_low_precision(layer.w_down, dtype),
    )


def _low_precision(weight_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A `dtype` copy of a transposed `[in, out]` weight, stored `[out, in]` and handed out
    as its `[in, out]` view (see `_cast_projections`)."""
    return weight_t.t().to(dtype).contiguous().t()
