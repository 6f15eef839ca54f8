"""The op set the model runs on: `ops_for("torch")` (references, any device) or
`ops_for("triton")` (Triton kernels: CUDA tensors, or CPU tensors under `TRITON_INTERPRET=1`).

Both sets have the same signatures (those of `kernels/ops.py`), so the engine picks one at
load and never branches on the backend again. The Triton modules are imported on first use:
`import ragkv.kernels` stays light, and `TRITON_INTERPRET` is read when they are imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from ragkv.kernels import ops

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class Ops:
    """One backend's ops (see `kernels/ops.py` for each one's shapes and meaning).

    `rotate_qk(x, cos, sin)` rotates a step's fresh q/k heads and may do it in place (the
    Triton backend does; its input is a view of a buffer nobody else reads); `apply_rope`
    never touches its input (it re-rotates cached chunk keys).
    """

    name: str
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope_cos_sin: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    apply_rope: Callable[..., torch.Tensor]
    rotate_qk: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]
    plan_attention: Callable[..., Any]
    paged_attention: Callable[..., torch.Tensor]
    attention: Callable[..., torch.Tensor]
    k_deviation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    topk_indices: Callable[[torch.Tensor, int], torch.Tensor]


TORCH_OPS = Ops(
    name="torch",
    rms_norm=ops.rms_norm,
    add_rms_norm=ops.add_rms_norm_ref,
    rope_cos_sin=ops.rope_cos_sin,
    apply_rope=ops.apply_rope,
    rotate_qk=ops.apply_rope,
    silu_mul=ops.silu_mul,
    plan_attention=ops.plan_attention,
    paged_attention=ops.paged_attention,
    attention=ops.attention,
    k_deviation=ops.k_deviation_ref,
    topk_indices=ops.topk_indices_ref,
)


@cache
def _triton_ops() -> Ops:
    """Import the Triton kernels (once) and bind them into an `Ops`."""
    from ragkv.kernels import (
        triton_activation,
        triton_attention,
        triton_norm,
        triton_rope,
        triton_select,
    )

    def rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return triton_rope.apply_rope(x, cos, sin, out=x)

    return Ops(
        name="triton",
        rms_norm=triton_norm.rms_norm,
        add_rms_norm=triton_norm.add_rms_norm,
        rope_cos_sin=ops.rope_cos_sin,  # one small table per forward, shared by every layer
        apply_rope=triton_rope.apply_rope,
        rotate_qk=rotate_in_place,
        silu_mul=triton_activation.silu_mul,
        plan_attention=triton_attention.plan_attention,
        paged_attention=triton_attention.paged_attention,
        attention=triton_attention.attention_sparse,
        k_deviation=triton_select.k_deviation,
        topk_indices=triton_select.topk_indices,
    )


def ops_for(backend: str) -> Ops:
    """The op set of `backend` ("torch" or "triton")."""
    if backend == "torch":
        return TORCH_OPS
    if backend == "triton":
        return _triton_ops()
    raise ValueError(f"unknown ops backend '{backend}' (expected one of {BACKENDS})")
