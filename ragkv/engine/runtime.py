"""Where and how the model runs: device, ops backend and dtype, resolved once at load.

`model.device` auto is CUDA when torch sees one, else the CPU; `model.backend` auto is the
Triton kernels on CUDA and the torch references on the CPU. `triton` on a CPU is allowed only
under Triton's interpreter (`TRITON_INTERPRET=1`: slow, for tests); otherwise it is a startup
error saying what to set, never a silent fallback.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ragkv.errors import ModelError
from ragkv.kernels.checks import interpreting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The resolved device, ops backend and weight/KV dtype of the served model."""

    backend: str
    device: torch.device
    dtype: torch.dtype
    # how decode steps run: "native" (`ragkv.engine.native_decode`) or "torch", on weights
    # of `decode_dtype` (None: `dtype`)
    decode: str = "torch"
    decode_dtype: torch.dtype | None = None

    def to_json(self) -> dict[str, str]:
        """`{"backend", "device", "dtype", "decode", "decode_dtype"}` as `/v1/models` reports
        them."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "decode": self.decode,
            "decode_dtype": str(self.decode_dtype or self.dtype).removeprefix("torch."),
        }


def resolve_runtime(device: str, backend: str, dtype: str) -> Runtime:
    """Resolve the `model.device`, `model.backend` and `model.dtype` settings."""
    resolved = resolve_device(device)
    return Runtime(resolve_backend(backend, resolved), resolved, DTYPES[dtype])


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a CUDA device is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            f"model.device '{device}' but torch sees no CUDA device "
            f"(torch {torch.__version__}); set model.device to 'cpu' or 'auto'"
        )
    return torch.device(device)


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto` -> triton on CUDA (when Triton is installed), torch otherwise."""
    has_triton = importlib.util.find_spec("triton") is not None
    if backend == "auto":
        return "triton" if device.type == "cuda" and has_triton else "torch"
    if backend == "torch":
        return "torch"
    if not has_triton:
        raise ModelError("model.backend 'triton' but the triton package is not installed")
    if device.type != "cuda" and not interpreting():
        raise ModelError(
            f"model.backend 'triton' needs a CUDA device (the model runs on {device}); "
            "set model.backend to 'torch' or 'auto', or TRITON_INTERPRET=1 to run the "
            "kernels in Triton's CPU interpreter (slow: for tests)"
        )
    return "triton"
