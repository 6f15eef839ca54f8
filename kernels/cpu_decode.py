"""The native CPU kernels (`cpu_decode.c`: the decode step, `cpu_attention.c`: causal
attention over the KV pages): built with the system C compiler on
first use, cached by source and compiler, loaded through ctypes.

`load()` answers the library, or None with the reason in `why_unavailable()`: not x86-64, no C
compiler, a failed build, a CPU without AVX2/FMA/F16C, or a second OpenMP runtime (the library
must share torch's libgomp: two runtimes would each keep a team of spinning threads on the
same cores). Nothing here is needed for correctness: the torch path computes the same step.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch  # loaded before the library: its libgomp is the one the library binds to

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_decode.c")
# every file of the library (`cpu_decode.c` includes the others): all of them key the cache
SOURCES = (
    SOURCE,
    *(Path(__file__).with_name(n) for n in ("cpu_attention.c", "cpu_bf16.c", "cpu_pointwise.c")),
)
BUILD_TIMEOUT_S = 120
_why: list[str] = []


class Shape(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "hidden",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate",
            "vocab",
            "num_layers",
            "threads",
        )
    ] + [("eps", ctypes.c_float), ("scale", ctypes.c_float)]


class Layer(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "attn_norm",
            "wqkv",
            "bqkv",
            "wo",
            "ffn_norm",
            "w_gate_up",
            "w_down",
            "k_cache",
            "v_cache",
        )
    ]


def cache_dir() -> Path:
    """Where built libraries are kept: `$RAGKV_NATIVE_CACHE`, else `$XDG_CACHE_HOME/ragkv`
    (default `~/.cache/ragkv`) under `native/`."""
    explicit = os.environ.get("RAGKV_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ragkv" / "native"


def why_unavailable() -> str | None:
    """Why `load()` answered None (None when it has not, or loaded the library)."""
    return _why[-1] if _why else None


@cache
def load() -> ctypes.CDLL | None:
    """The built library (once per process), or None (see `why_unavailable`)."""
    try:
        lib = _load()
    except (OSError, subprocess.SubprocessError) as exc:
        _why.append(f"native decode library unavailable: {exc}")
        lib = None
    if lib is None:
        log.info("%s; decode steps run on the torch path", why_unavailable())
    return lib


def _load() -> ctypes.CDLL | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _why.append(f"native decode is x86-64 only (this is {platform.machine()})")
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        _why.append("no C compiler (cc/gcc) on PATH to build the native decode step")
        return None
    path = _build(compiler)
    gomp_before = _openmp_runtimes()
    lib = ctypes.CDLL(str(path))
    if len(_openmp_runtimes() - gomp_before) and gomp_before:
        _why.append("the native decode library loaded a second OpenMP runtime")
        return None
    lib.ragkv_cpu_supported.restype = ctypes.c_int
    if not lib.ragkv_cpu_supported():
        _why.append("this CPU lacks AVX2/FMA/F16C, which the native decode step needs")
        return None
    lib.ragkv_bf16_supported.restype = ctypes.c_int
    lib.ragkv_gemm_bf16.restype = None
    pointers, sizes = [ctypes.c_void_p] * 3, [ctypes.c_int64] * 3
    lib.ragkv_gemm_bf16.argtypes = pointers + sizes + [ctypes.c_void_p, ctypes.c_int64]
    lib.ragkv_gemm_head_f16.restype = None
    lib.ragkv_gemm_head_f16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
    lib.ragkv_scratch_floats.restype = ctypes.c_int64
    lib.ragkv_scratch_floats.argtypes = [ctypes.POINTER(Shape), ctypes.c_int64, ctypes.c_int64]
    lib.ragkv_decode_step.restype = None
    lib.ragkv_decode_step.argtypes = (
        [ctypes.POINTER(Shape), ctypes.POINTER(Layer)]
        + [ctypes.c_void_p] * 2
        + [ctypes.c_int64] * 2
        + [ctypes.c_void_p] * 9
    )
    _bind_pointwise(lib)
    lib.ragkv_causal_attention.restype = None
    lib.ragkv_causal_attention.argtypes = (
        [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        + [ctypes.c_int64] * 4
        + [ctypes.c_void_p] * 4
        + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    )
    return lib


def _bind_pointwise(lib: ctypes.CDLL) -> None:
    """Signatures of `cpu_pointwise.c`'s exports (float32 row ops)."""
    p, n, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    signatures = {
        "ragkv_rms_norm_rows": [p, n, p, p, n, n, f, n],
        "ragkv_add_rms_norm_rows": [p, p, p, p, p, n, n, f, n],
        "ragkv_silu_mul_rows": [p, p, n, n, n],
        "ragkv_rope_rows": [p, n, n, n, p, p, n, n],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = None, argtypes


def bf16_supported() -> bool:
    """Whether the library's bfloat16 products (`cpu_bf16.c`) may run on this CPU
    (AVX512-BF16)."""
    lib = load()
    return lib is not None and bool(lib.ragkv_bf16_supported())


def pack_bf16_panels(weight: torch.Tensor) -> torch.Tensor:
    """`weight [out, in]` as the packed bfloat16 panels `cpu_bf16.c` reads: rounded to
    bfloat16, zero-padded to whole panels of 16 outputs and to input pairs, laid out
    `[out / 16][in / 2][16][2]` (contiguous)."""
    out_features, in_features = weight.shape
    padded = torch.zeros(
        (out_features + 15) // 16 * 16, (in_features + 1) // 2 * 2, dtype=torch.bfloat16
    )
    padded[:out_features, :in_features] = weight.to(torch.bfloat16)
    panels = padded.view(padded.shape[0] // 16, 16, padded.shape[1] // 2, 2)
    return panels.permute(0, 2, 1, 3).contiguous()


def gemm_bf16(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    """`x [B, in] @ W.T` on `pack_bf16_panels(W)` by the library's bfloat16 product (float32
    in and out; the rows of `x` rounded to bfloat16 first): `[B, out_features]`."""
    lib = load()
    assert lib is not None and lib.ragkv_bf16_supported(), "check bf16_supported() first"
    x = x.float().contiguous()
    batch, cols = x.shape
    y = torch.empty((batch, out_features), dtype=torch.float32)
    xb = torch.empty((batch + 16) * ((cols + 1) // 2 * 2), dtype=torch.bfloat16)  # rows padded
    lib.ragkv_gemm_bf16(
        panels.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        out_features,
        cols,
        batch,
        xb.data_ptr(),
        torch.get_num_threads(),
    )
    return y


def pack_f16_panels(weight: torch.Tensor) -> torch.Tensor:
    """`weight [out, in]` as the float16 panels of the batched head (`cpu_bf16.c`): padded
    to whole panels of 16 outputs, laid out `[out / 16][in][16]` (contiguous)."""
    out_features, in_features = weight.shape
    padded = torch.zeros((out_features + 15) // 16 * 16, in_features, dtype=torch.float16)
    padded[:out_features] = weight.to(torch.float16)
    return padded.view(-1, 16, in_features).transpose(1, 2).contiguous()


def gemm_head_f16(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    """`x [B, in] @ W.T` on `pack_f16_panels(W)` by the library's batched head (float32 rows,
    float32 sums): `[B, out_features]`."""
    lib = load()
    assert lib is not None and lib.ragkv_bf16_supported(), "check bf16_supported() first"
    x = x.float().contiguous()
    batch, cols = x.shape
    y = torch.empty((batch, out_features), dtype=torch.float32)
    lib.ragkv_gemm_head_f16(
        panels.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        out_features,
        cols,
        batch,
        torch.get_num_threads(),
    )
    return y


def causal_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_start: torch.Tensor,
    slots: torch.Tensor,
    slot_start: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of a step's sequences in one call (`cpu_attention.c`): `q: [T, H, D]`
    float32 (rows may be strided, heads contiguous); caches `[pages, page_size, KH, D]`;
    sequence b owns rows `q_start[b]:q_start[b + 1]` and its key j sits at
    `slots[slot_start[b] + j]`; row t sits at `positions[t]` (ascending within a sequence)
    and sees its sequence's keys `0..positions[t]`. Index tensors int64. Returns `[T, H, D]`."""
    lib = load()
    assert lib is not None, "check load() first"
    num_tokens, heads, head_dim = q.shape
    if q.stride(2) != 1 or q.stride(1) != head_dim or q.dtype != torch.float32:
        q = q.contiguous().float()
    out = torch.empty((num_tokens, heads, head_dim), dtype=torch.float32)
    index = [t.contiguous() for t in (q_start, slots, slot_start, positions)]
    lib.ragkv_causal_attention(
        q.data_ptr(),
        q.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        heads,
        k_cache.shape[2],
        head_dim,
        q_start.shape[0] - 1,
        *(t.data_ptr() for t in index),
        scale,
        out.data_ptr(),
        heads * head_dim,
        torch.get_num_threads(),
    )
    return out


def _build(compiler: str) -> Path:
    """The library for this source and compiler, built unless already cached."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()[0]
    text = b"".join(path.read_bytes() for path in SOURCES)
    digest = hashlib.sha256(text + version.encode()).hexdigest()[:16]
    target = cache_dir() / f"ragkv_cpu_decode-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the native decode step (%s, once per source and compiler)", compiler)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, "-O3", "-fopenmp", "-shared", "-fPIC", "-o", str(built)]
        result = subprocess.run(
            [*command, str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise OSError(f"building {SOURCE.name} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: a concurrent build or reader sees a whole file
    return target


def _openmp_runtimes() -> set[str]:
    """Paths of the libgomp files mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "libgomp" in line}
