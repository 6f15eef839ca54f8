"""A model's decode step as one native call (`kernels/cpu_decode.c`).

`NativeDecode` binds a `LlamaModel`'s float16 decode weights and one `KVPool`'s caches to the
library once (pointers, held alive here), then runs a step: one new token for each of B
sequences, embeddings in, their KV written, logits out. The model hands it decode-only steps
whose every token is at its sequence's last position (attention over all cached keys, no
mask) and keeps the torch path for everything else (prefill, a decode that needs a mask,
float32 weights, a CPU without the library).

Steps of more than `small_rows` sequences are compute-bound: where the model has bfloat16
batch weights (`model.batch_dtype`) and the CPU multiplies bfloat16 (AVX512-BF16), they run
on those weights packed into panels (`pack_batch_layers`, `kernels/cpu_bf16.c`), the LM head
on the float16 head of one-row steps (a bfloat16 head cost quality: 98.1%, not 99.4%).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import torch

from ragkv.engine.kv_pool import KVPool
from ragkv.kernels import cpu_decode

# `model` below is a `ragkv.engine.model.LlamaModel` (not imported: that module imports this one)
LlamaModel = Any


def supported(model: LlamaModel) -> str | None:
    """Why `model` cannot take native decode steps (None: it can)."""
    why = _why_not_native(model)
    if why is None and (model.decode_layers is None or model.decode_dtype != torch.float16):
        return "native decode reads float16 decode weights (model.decode_dtype float16)"
    return why


def batch_supported(model: LlamaModel) -> bool:
    """Whether `model`'s batched decode steps may run natively on packed bfloat16 panels:
    its batch copies are bfloat16 and the CPU multiplies bfloat16 (AVX512-BF16)."""
    layers = model.batch_layers
    return (
        layers is not None
        and layers[0].w_gate_up.dtype == torch.bfloat16
        and cpu_decode.bf16_supported()
    )


@dataclass
class PackedLayer:
    """One layer's projections as packed bfloat16 panels (`cpu_decode.pack_bf16_panels`)."""

    wqkv: torch.Tensor
    wo: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


def pack_batch_layers(layers: list) -> list[PackedLayer]:
    """Panels of `layers`' projections (`LayerWeights`, `[in, out]` views of `[out, in]`)."""
    pack = cpu_decode.pack_bf16_panels
    return [
        PackedLayer(
            wqkv=pack(layer.wqkv.t()),
            wo=pack(layer.wo.t()),
            w_gate_up=pack(layer.w_gate_up.t()),
            w_down=pack(layer.w_down.t()),
        )
        for layer in layers
    ]


def attention_supported(model: LlamaModel) -> bool:
    """Whether `model`'s attention may run on the native causal kernel (`cpu_attention.c`):
    float32 on a CPU, the torch ops, the library built."""
    return _why_not_native(model) is None


def _why_not_native(model: LlamaModel) -> str | None:
    """What keeps every native kernel from `model` (None: nothing)."""
    if model.device.type != "cpu":
        return "native decode runs on CPU tensors only"
    if model.dtype != torch.float32:
        return "native decode needs float32 activations and KV (model.dtype float32)"
    if model.ops.name != "torch":
        return "native decode replaces the torch ops path only"
    if cpu_decode.load() is None:
        return cpu_decode.why_unavailable()
    return None


class NativeDecode:
    """The native step over `model`'s decode weights and `pool`'s caches."""

    def __init__(self, model: LlamaModel, pool: KVPool, small_rows: int) -> None:
        self.lib = cpu_decode.load()
        assert self.lib is not None, "check native_decode.supported(model) first"
        c = model.config
        self.shape = cpu_decode.Shape(
            hidden=c.hidden_size,
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            intermediate=c.intermediate_size,
            vocab=model.decode_lm_head.shape[0],
            num_layers=c.num_layers,
            threads=torch.get_num_threads(),
            eps=c.rms_norm_eps,
            scale=model.scale,
        )
        self.pool = pool
        self.small_rows = small_rows
        self._alive: list[torch.Tensor] = []  # every tensor a pointer below points into
        half = torch.float16
        self.layers = self._bind(model, model.decode_layers, half, lambda w: w.t())
        self.batch_layers = None  # packed bfloat16 panels for steps above `small_rows`
        if model.batch_panels is not None:
            bf16 = torch.bfloat16
            self.batch_layers = self._bind(model, model.batch_panels, bf16, lambda w: w)
        self.final_norm = self._ptr(model.final_norm, torch.float32)
        self.lm_head = self._ptr(model.decode_lm_head, torch.float16)
        self.head_panels = None  # the same float16 head as panels, for steps above `small_rows`
        if self.batch_layers is not None:
            panels = cpu_decode.pack_f16_panels(model.decode_lm_head)
            self.head_panels = self._ptr(panels, torch.float16)
        self.embed = model.embed
        self.scratch = torch.empty(0, dtype=torch.float32)  # grown to the largest step

    def _bind(self, model: LlamaModel, weights: list, dtype: torch.dtype, layout) -> Any:
        """The library's `Layer` array: norms, bias and caches of `model`, the projections
        of `weights` (`layout(w)`: the array the library reads, in `dtype`)."""
        c = model.config
        layers = (cpu_decode.Layer * c.num_layers)()
        for index, (exact, low) in enumerate(zip(model.layers, weights, strict=True)):
            k_flat, v_flat = self.pool.flat_caches(index)
            bias = None if exact.bqkv is None else exact.bqkv.float().contiguous()
            layers[index] = cpu_decode.Layer(
                attn_norm=self._ptr(exact.attn_norm, torch.float32),
                wqkv=self._ptr(layout(low.wqkv), dtype),
                bqkv=None if bias is None else self._ptr(bias, torch.float32),
                wo=self._ptr(layout(low.wo), dtype),
                ffn_norm=self._ptr(exact.ffn_norm, torch.float32),
                w_gate_up=self._ptr(layout(low.w_gate_up), dtype),
                w_down=self._ptr(layout(low.w_down), dtype),
                k_cache=self._ptr(k_flat, torch.float32),
                v_cache=self._ptr(v_flat, torch.float32),
            )
        return layers

    def _ptr(self, tensor: torch.Tensor, dtype: torch.dtype) -> int:
        if tensor.dtype != dtype or not tensor.is_contiguous() or tensor.device.type != "cpu":
            raise ValueError(f"native decode needs contiguous {dtype} CPU tensors")
        self._alive.append(tensor)
        return tensor.data_ptr()

    def step(
        self,
        token_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        write_slots: torch.Tensor,
        slots: torch.Tensor,
        slot_start: torch.Tensor,
        num_keys: torch.Tensor,
    ) -> torch.Tensor:
        """Logits `[B, vocab]` (float32) of one new token per sequence: `token_ids [B]`,
        rotated by `cos, sin [B, head_dim]`, their K/V written at `write_slots [B]`; row b
        attends to the keys at `slots[slot_start[b] + j]` for j < `num_keys[b]` (int64; the
        last of them is its write slot). Above `small_rows` rows the packed bfloat16 layers
        and the float16 head's panels serve when bound."""
        batch = token_ids.shape[0]
        packed = batch > self.small_rows and self.batch_layers is not None
        hidden = self.embed.index_select(0, token_ids)  # a new tensor: the step's residual
        cos, sin = cos.contiguous(), sin.contiguous()
        index = [t.contiguous() for t in (write_slots, slots, slot_start, num_keys)]
        if any(t.dtype != torch.int64 for t in index):
            raise ValueError("native decode takes int64 slots and counts")
        logits = torch.empty((batch, self.shape.vocab), dtype=torch.float32)
        self.shape.threads = torch.get_num_threads()  # as torch's own ops would use now
        need = self.lib.ragkv_scratch_floats(ctypes.byref(self.shape), batch, slots.shape[0])
        if self.scratch.numel() < need:
            self.scratch = torch.empty(need, dtype=torch.float32)
        self.lib.ragkv_decode_step(
            ctypes.byref(self.shape),
            self.batch_layers if packed else self.layers,
            self.final_norm,
            self.head_panels if packed else self.lm_head,
            batch,
            int(packed),
            hidden.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            *(t.data_ptr() for t in index),
            self.scratch.data_ptr(),
            logits.data_ptr(),
        )
        return logits
