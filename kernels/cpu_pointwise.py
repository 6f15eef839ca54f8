"""The pointwise ops of prefill and mixed steps on the native library (`cpu_pointwise.c`), with
the signatures of `kernels/ops.py`: RMSNorm, residual add + RMSNorm, SwiGLU and in-place RoPE
of a step's q/k heads. Each takes float32 CPU rows in the layouts the model hands them and
leaves anything else (another dtype or device, a layout the library does not read) to the
torch reference, so the op set can replace the torch ops wholesale (`LlamaModel`)."""

from __future__ import annotations

import torch

from ragkv.kernels import cpu_decode, ops


def _rows(x: torch.Tensor) -> bool:
    """float32 CPU rows whose last dimension is contiguous (rows may be strided)."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 and x.stride(1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not (_rows(x) and weight.dtype == torch.float32 and weight.is_contiguous()):
        return ops.rms_norm(x, weight, eps)
    rows, n = x.shape
    out = torch.empty((rows, n), dtype=torch.float32)
    cpu_decode.load().ragkv_rms_norm_rows(
        x.data_ptr(),
        x.stride(0),
        weight.data_ptr(),
        out.data_ptr(),
        rows,
        n,
        eps,
        torch.get_num_threads(),
    )
    return out


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = (x, delta, weight)
    if not (all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors) and _rows(x)):
        return ops.add_rms_norm_ref(x, delta, weight, eps)
    if delta.shape != x.shape:
        return ops.add_rms_norm_ref(x, delta, weight, eps)
    rows, n = x.shape
    total, normed = torch.empty_like(x), torch.empty_like(x)
    cpu_decode.load().ragkv_add_rms_norm_rows(
        x.data_ptr(),
        delta.data_ptr(),
        weight.data_ptr(),
        total.data_ptr(),
        normed.data_ptr(),
        rows,
        n,
        eps,
        torch.get_num_threads(),
    )
    return total, normed


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if not (_rows(gate_up) and gate_up.is_contiguous() and gate_up.shape[1] % 2 == 0):
        return ops.silu_mul(gate_up)
    rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    act = torch.empty((rows, inter), dtype=torch.float32)
    cpu_decode.load().ragkv_silu_mul_rows(
        gate_up.data_ptr(), act.data_ptr(), rows, inter, torch.get_num_threads()
    )
    return act


def rotate_qk(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x: [T, heads, D]` rotated in place (rows may be strided, heads contiguous) by
    `cos, sin: [T, D]`; returns `x`."""
    rows, heads, dim = x.shape
    native = (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.stride(2) == 1
        and x.stride(1) == dim
        and all(
            t.shape == (rows, dim) and t.is_contiguous() and t.dtype == x.dtype for t in (cos, sin)
        )
    )
    if not native:
        return ops.apply_rope(x, cos, sin, out=x)
    cpu_decode.load().ragkv_rope_rows(
        x.data_ptr(),
        x.stride(0),
        heads,
        dim,
        cos.data_ptr(),
        sin.data_ptr(),
        rows,
        torch.get_num_threads(),
    )
    return x
