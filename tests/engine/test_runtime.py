"""`model.device` / `model.backend` resolution: auto picks by device, triton on a CPU only
under the interpreter, and a wrong choice is a clear startup error."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ragkv.engine.runtime import resolve_backend, resolve_device, resolve_runtime
from ragkv.errors import ModelError
from ragkv.kernels.backend import TORCH_OPS, ops_for

CPU = torch.device("cpu")


def test_auto_is_torch_on_the_cpu_and_triton_on_cuda() -> None:
    assert resolve_backend("auto", CPU) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"


def test_triton_on_a_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ModelError, match="needs a CUDA device.*TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", CPU) == "triton"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_a_device_is_refused() -> None:
    assert resolve_device("auto") == CPU
    with pytest.raises(ModelError, match="no CUDA device"):
        resolve_device("cuda")


def test_runtime_reports_backend_device_and_dtype() -> None:
    runtime = resolve_runtime("cpu", "torch", "bfloat16")
    assert runtime.to_json() == {
        "backend": "torch",
        "device": "cpu",
        "dtype": "bfloat16",
        "decode": "torch",  # until the engine says otherwise
        "decode_dtype": "bfloat16",  # none given: the weights' dtype
    }
    native = replace(runtime, decode="native", decode_dtype=torch.float16)
    assert native.to_json()["decode"] == "native"
    assert native.to_json()["decode_dtype"] == "float16"


def test_ops_sets_have_one_shape() -> None:
    assert ops_for("torch") is TORCH_OPS
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops_for("cuda")
