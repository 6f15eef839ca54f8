"""The native one-sequence decode step (`kernels/cpu_decode.c` via `ragkv.engine.native_decode`)
against the torch path: on weights that float16 holds exactly it is the float32 model's step,
up to the order of float32 sums (tolerances, never bit equality)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ragkv.assets import generation_model_path
from ragkv.engine.calibrate import calibrated_products, native_decode_ready
from ragkv.engine.engine import LLMEngine
from ragkv.engine.kv_pool import KVPool, page_table_csr
from ragkv.engine.model import ForwardBatch, LlamaModel
from ragkv.engine.native_decode import supported
from ragkv.engine.synthetic import random_weights
from ragkv.engine.weights import load_weights
from ragkv.kernels import cpu_decode
from ragkv.settings import EngineSettings, ModelSettings
from tests.engine.helpers import greedy_request, prefill_logits, run_greedy
from tests.engine.random_model import llama_config, qwen2_config

if cpu_decode.load() is None:
    pytest.skip(f"{cpu_decode.why_unavailable()}", allow_module_level=True)


def odd_widths_config():
    """Widths that are not multiples of 8 or 32: the GEMV's remainder loops run."""
    return replace(llama_config(), hidden_size=196, intermediate_size=300)


def float16_exact(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` rounded to float16 values (kept float32): a float16 copy of them is exact."""
    return {name: w.half().float() for name, w in weights.items()}


def pair(config, weights) -> tuple[LlamaModel, LlamaModel]:
    """(native float16 decode, plain float32) models over the same float16-exact weights."""
    native = LlamaModel(config, weights, decode_dtype=torch.float16, native_decode=True)
    assert native.native_decode_off is None
    return native, LlamaModel(config, weights)


def teacher_forced(
    model: LlamaModel, tokens: list[int], prompt_len: int, scatter: bool = False
) -> tuple[torch.Tensor, KVPool]:
    """Logits `[len(tokens) - prompt_len, vocab]` of one-row decode steps fed `tokens` after
    a prefill of the first `prompt_len`, and the pool. `scatter`: the sequence's pages in
    descending order (attention gathers its keys instead of viewing a run of the cache)."""
    page_size = 4
    pool = KVPool(model.config, -(-len(tokens) // page_size) + 1, page_size, model.dtype)
    pages = pool.alloc(pool.pages_for(len(tokens)))
    if scatter:
        pages = pages[::-1]
    rows = []
    for start, end in [(0, prompt_len)] + [(i, i + 1) for i in range(prompt_len, len(tokens))]:
        batch = one_sequence_batch(pool, pages, torch.tensor(tokens[start:end]), start)
        logits = model.forward(batch, pool)
        if start >= prompt_len:
            rows.append(logits[0])
    return torch.stack(rows), pool


@pytest.mark.parametrize("scatter", [False, True], ids=["consecutive-pages", "scattered-pages"])
@pytest.mark.parametrize(
    "make_config",
    [llama_config, qwen2_config, odd_widths_config],
    ids=["llama", "qwen2-bias", "odd-widths"],
)
def test_native_steps_are_the_float32_steps_on_float16_exact_weights(make_config, scatter) -> None:
    config = make_config()
    native, plain = pair(config, float16_exact(random_weights(config, seed=3)))
    tokens = torch.randint(0, config.vocab_size, (40,), generator=torch.Generator().manual_seed(5))
    got, got_pool = teacher_forced(native, tokens.tolist(), 13, scatter)
    want, want_pool = teacher_forced(plain, tokens.tolist(), 13, scatter)
    assert native.native_steps == 27 and plain.native_steps == 0
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    # every layer's K and V of every decoded token went into the pool, as the torch path's
    assert torch.allclose(got_pool.kv, want_pool.kv, rtol=1e-4, atol=1e-4)


def test_smollm_native_steps_match_float32_on_float16_exact_weights() -> None:
    config, weights = load_weights(generation_model_path())
    native, plain = pair(config, float16_exact(weights))
    tokens = [(7919 * i) % 40000 + 100 for i in range(96)]
    got, _ = teacher_forced(native, tokens, 64)
    want, _ = teacher_forced(plain, tokens, 64)
    assert native.native_steps == 32
    got_lp, want_lp = got.log_softmax(-1), want.log_softmax(-1)
    assert float((got_lp - want_lp).abs().max()) < 1e-3
    assert torch.equal(got.argmax(-1), want.argmax(-1)) or _near_tie(want, got)


def test_a_batch_of_sequences_steps_natively_as_the_float32_batch_does() -> None:
    """Three sequences of different lengths, their pages interleaved, decode together."""
    config = qwen2_config()
    native, plain = pair(config, float16_exact(random_weights(config, seed=6)))
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=generator) for n in (9, 30, 17)]
    forced = torch.randint(0, config.vocab_size, (3, 12), generator=generator)
    got, got_pool = decode_together(native, prompts, forced)
    want, want_pool = decode_together(plain, prompts, forced)
    assert native.native_steps == 12
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    assert torch.allclose(got_pool.kv, want_pool.kv, rtol=1e-4, atol=1e-4)


def decode_together(
    model: LlamaModel, prompts: list[torch.Tensor], forced: torch.Tensor
) -> tuple[torch.Tensor, KVPool]:
    """Each prompt prefilled on its own, then one decode step of all sequences per column of
    `forced: [B, steps]`: the logits `[steps, B, vocab]` of those steps, and the pool."""
    page_size, steps = 4, forced.shape[1]
    lengths = [p.shape[0] + steps for p in prompts]
    pool = KVPool(
        model.config, sum(-(-n // page_size) for n in lengths) + 1, page_size, model.dtype
    )
    tables: list[list[int]] = [[] for _ in prompts]
    for index in range(max(-(-n // page_size) for n in lengths)):  # pages handed out in turn
        for b, n in enumerate(lengths):
            if index < -(-n // page_size):
                tables[b] += pool.alloc(1)
    for b, prompt in enumerate(prompts):
        model.forward(one_sequence_batch(pool, tables[b], prompt, 0), pool)
    rows = []
    for step in range(steps):
        kv_indptr, kv_indices = page_table_csr(tables)
        positions = torch.tensor([p.shape[0] + step for p in prompts])
        batch = ForwardBatch(
            token_ids=forced[:, step],
            positions=positions,
            write_slots=torch.cat(
                [pool.slots(t, int(q), int(q) + 1) for t, q in zip(tables, positions, strict=True)]
            ),
            qo_indptr=list(range(len(prompts) + 1)),
            kv_indptr=kv_indptr,
            kv_indices=kv_indices,
            kv_lens=[int(q) + 1 for q in positions],
            logits_rows=torch.arange(len(prompts)),
        )
        rows.append(model.forward(batch, pool))
    return torch.stack(rows), pool


def one_sequence_batch(
    pool: KVPool, pages: list[int], tokens: torch.Tensor, start: int
) -> ForwardBatch:
    """`tokens` of one sequence at positions `start...` (its page table `pages`)."""
    end = start + tokens.shape[0]
    kv_indptr, kv_indices = page_table_csr([pages])
    return ForwardBatch(
        token_ids=tokens,
        positions=torch.arange(start, end),
        write_slots=pool.slots(pages, start, end),
        qo_indptr=[0, end - start],
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_lens=[end],
        logits_rows=torch.tensor([end - start - 1]),
    )


def _near_tie(want: torch.Tensor, got: torch.Tensor) -> bool:
    """Where the argmaxes differ, float32's top two were within float32 rounding."""
    differ = got.argmax(-1) != want.argmax(-1)
    top2 = want[differ].topk(2, dim=-1).values
    return bool(((top2[:, 0] - top2[:, 1]) < 1e-3).all())


def test_steps_the_native_call_does_not_serve_run_on_the_torch_path() -> None:
    config = llama_config()
    weights = float16_exact(random_weights(config, seed=4))
    native, plain = pair(config, weights)
    tokens = list(range(1, 30))
    page_size = 4
    pool = KVPool(config, 10, page_size, torch.float32)
    pages = pool.alloc(pool.pages_for(len(tokens)))
    kv_indptr, kv_indices = page_table_csr([pages])
    # a decode step that is not at the last key (its attention needs a mask): torch path
    batch = ForwardBatch(
        token_ids=torch.tensor([tokens[20]]),
        positions=torch.tensor([20]),
        write_slots=pool.slots(pages, 20, 21),
        qo_indptr=[0, 1],
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_lens=[len(tokens)],
        logits_rows=torch.tensor([0]),
    )
    native.forward(batch, pool)
    assert native.native_steps == 0


def test_a_model_without_float16_decode_weights_says_why_not_native() -> None:
    config = llama_config()
    model = LlamaModel(config, random_weights(config, seed=1), native_decode=True)
    assert model.native_decode_off == supported(model)
    assert "float16" in model.native_decode_off


def test_the_engine_takes_native_steps_by_default_and_none_when_off(smollm) -> None:
    settings = EngineSettings(kv_cache_mb=64)
    for native_decode, expect in (("auto", True), ("off", False)):
        model_settings = ModelSettings(decode_dtype="float16", native_decode=native_decode)
        engine = LLMEngine.from_path(generation_model_path(), model_settings, settings)
        run_greedy(engine, [greedy_request(list(range(100, 140)), 8)])
        assert (engine.model.native_steps == 7) is expect, engine.model.native_decode_off
        runtime = engine.runtime.to_json()  # what GET /v1/models reports
        assert runtime["decode"] == ("native" if expect else "torch")
        assert runtime["decode_dtype"] == "float16"


def test_the_library_is_built_once_per_source_and_compiler(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAGKV_NATIVE_CACHE", str(tmp_path))
    compiler = os.environ.get("CC", "cc")
    built = cpu_decode._build(compiler)
    stamp = built.stat().st_mtime_ns
    assert cpu_decode._build(compiler) == built and built.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary left


def test_a_failed_build_is_an_error_naming_the_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAGKV_NATIVE_CACHE", str(tmp_path / "cache"))
    compiler = tmp_path / "cc"
    compiler.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "broken-cc 1.0" && exit 0\n'
        'echo "error: this compiler builds nothing" >&2; exit 1\n'
    )
    compiler.chmod(0o755)
    with pytest.raises(OSError, match="cpu_decode.c failed: error: this compiler builds nothing"):
        cpu_decode._build(str(compiler))
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-built left behind


def test_auto_decode_weights_are_float16_wherever_the_native_step_runs() -> None:
    cpu, fp32 = torch.device("cpu"), torch.float32
    assert native_decode_ready(ModelSettings(), fp32, cpu)
    assert not native_decode_ready(ModelSettings(native_decode="off"), fp32, cpu)
    assert not native_decode_ready(ModelSettings(), torch.bfloat16, cpu)
    assert not native_decode_ready(ModelSettings(), fp32, torch.device("cuda"))
    assert not native_decode_ready(ModelSettings(backend="triton"), fp32, cpu)
    config = llama_config()
    _, decode_dtype, _ = calibrated_products(ModelSettings(), config, fp32, cpu)
    assert decode_dtype == torch.float16  # chosen without timing the torch float16 path
    _, exact, _ = calibrated_products(ModelSettings(decode_dtype="same"), config, fp32, cpu)
    assert exact is None


def test_native_attention_keeps_the_float32_model_within_its_tolerances() -> None:
    """float32 weights (no native decode step) with the native causal kernel for attention:
    prefill logits as the torch path's, then a prefill after cached KV and decodes."""
    config, weights = load_weights(generation_model_path())
    native = LlamaModel(config, weights, native_decode=True)
    plain = LlamaModel(config, weights)
    assert native.native_decode_off is not None  # float32 decode: the torch step...
    assert native.ops.paged_attention is not plain.ops.paged_attention  # ...native attention
    tokens = [(104729 * i) % 40000 + 100 for i in range(300)]
    got = prefill_logits(native, tokens)
    want = prefill_logits(plain, tokens)
    assert float((got - want).abs().max()) < 1e-3
    got_steps, _ = teacher_forced(native, tokens[:120], 100)  # 100-token prefill, 20 decodes
    want_steps, _ = teacher_forced(plain, tokens[:120], 100)
    assert float((got_steps - want_steps).abs().max()) < 1e-3
