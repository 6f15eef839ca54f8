"""Launcher-side checks shared by the Triton kernels: devices, dtypes, shapes, strides.

A Triton kernel given a tensor on the wrong device, of an unsupported dtype or with a
non-unit inner stride computes garbage or faults; every launcher checks its inputs here first
and raises `ValueError` naming the argument.
"""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*named: tuple[str, torch.Tensor]) -> torch.device:
    """All tensors on one device, and a device Triton can run on: CUDA, or the CPU under
    the interpreter. Returns that device."""
    device = named[0][1].device
    for name, tensor in named:
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device}, expected {device}")
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"Triton kernels need CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
            "to run them on the CPU interpreter"
        )
    return device


def check_float(name: str, tensor: torch.Tensor, ndim: int) -> None:
    """`tensor` is a float32/float16/bfloat16 tensor of `ndim` dims with a unit last stride."""
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected one of {FLOAT_DTYPES}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(tensor.shape)}")
    if tensor.numel() and tensor.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (stride {tensor.stride()})")


def check_same_dtype(*named: tuple[str, torch.Tensor]) -> None:
    """All tensors share the first one's dtype."""
    dtype = named[0][1].dtype
    for name, tensor in named:
        if tensor.dtype != dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype}, expected {dtype}")


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """`tensor.shape == shape` (-1 in `shape` matches any size)."""
    if len(tensor.shape) != len(shape) or any(
        want not in (-1, got) for want, got in zip(shape, tensor.shape, strict=True)
    ):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact fp32 products for fp32 inputs (TF32 would miss the
    1e-4 tolerance against the torch backend), the native path for fp16/bf16."""
    return "ieee" if dtype == torch.float32 else "tf32"
