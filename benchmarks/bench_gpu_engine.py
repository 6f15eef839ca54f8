"""GPU engine benchmark: ragkv on its Triton backend vs transformers, same model and dtype.

The model is a random-weight Llama of a real shape (speed does not depend on the weights'
values, and the GPU machine cannot fetch model files): SmolLM2-135M's shape by default,
`--shape llama-1b` for Llama-3.2-1B's. Rows, each with the baseline of the same run:
prefill 512 / 2,048 tokens/s; decode tokens/s with 1 and 32 streams; RAG TTFT of a blended
prefill (12 cached chunks, CacheBlend 15%) vs a full prefill of the same prompt; and quality
next to speed: max |logit difference| of the Triton backend vs the torch backend, and vs
transformers, on the same prefill, with greedy agreement over the decode.

`--dry-run` runs every row once on a tiny shape on the CPU under Triton's interpreter (no
timing claims): it proves the script end to end on a machine without a GPU.
Not a test: nothing is asserted. Prints a table and JSON (`--json PATH`).
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from machine import machine  # noqa: E402

from ragkv.engine.blend.prefill import blended_prefill, place_chunks  # noqa: E402
from ragkv.engine.blend.selectors import make_selector  # noqa: E402
from ragkv.engine.config import ModelConfig  # noqa: E402
from ragkv.engine.forward_batch import build_forward_batch  # noqa: E402
from ragkv.engine.kv_pool import KVPool  # noqa: E402
from ragkv.engine.model import LlamaModel  # noqa: E402
from ragkv.engine.sequence import ChunkSpan, KVReuse  # noqa: E402
from ragkv.engine.synthetic import random_weights  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9,
                         num_kv_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0),
    "llama-1b": dict(num_layers=16, hidden_size=2048, intermediate_size=8192, num_heads=32,
                     num_kv_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0),
    "tiny": dict(num_layers=2, hidden_size=192, intermediate_size=256, num_heads=6,
                 num_kv_heads=2, head_dim=32, vocab_size=512, rope_theta=10000.0),
}  # fmt: skip
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Plan:
    """Sizes of one run: full on a GPU, tiny for `--dry-run`."""

    prefill: tuple[int, ...] = (512, 2048)
    decode_tokens: int = 128
    streams: int = 32
    chunks: int = 12
    chunk_tokens: int = 240
    runs: int = 5


DRY_PLAN = Plan(prefill=(24,), decode_tokens=3, streams=2, chunks=3, chunk_tokens=16, runs=1)


def model_config(shape: str) -> ModelConfig:
    """The named shape as a tied-embedding Llama config."""
    return ModelConfig(
        architecture="llama", name=shape, context_length=8192, rms_norm_eps=1e-5, **SHAPES[shape]
    )


@dataclass
class Seq:
    """What `build_forward_batch` reads of a sequence."""

    token_ids: list[int]
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0


class Runner:
    """Prefill and greedy decode of a `LlamaModel` over its own paged pool."""

    def __init__(self, model: LlamaModel, max_tokens: int, streams: int) -> None:
        self.model = model
        pages = streams * (-(-max_tokens // 16) + 1) + 1
        self.pool = KVPool(model.config, pages, 16, model.dtype, model.device)

    def run(self, seqs: list[Seq], counts: list[int]) -> torch.Tensor:
        """One forward: `counts[i]` new tokens of `seqs[i]`; last-token logits `[B, vocab]`."""
        for seq, count in zip(seqs, counts, strict=True):
            needed = self.pool.pages_for(seq.num_computed + count) - len(seq.pages)
            seq.pages += self.pool.alloc(max(0, needed))
        logits = self.model.forward(
            build_forward_batch(list(zip(seqs, counts, strict=True)), self.pool), self.pool
        )
        for seq, count in zip(seqs, counts, strict=True):
            seq.num_computed += count
        return logits

    def generate(self, prompts: list[list[int]], num_tokens: int) -> list[list[int]]:
        """Greedy tokens of each prompt (prefilled together, decoded as one batch)."""
        seqs = [Seq(list(p)) for p in prompts]
        logits = self.run(seqs, [len(p) for p in prompts])
        for _ in range(num_tokens):
            for seq, token in zip(seqs, logits.argmax(-1).tolist(), strict=True):
                seq.token_ids.append(token)
            logits = self.run(seqs, [1] * len(seqs))
        self.release(seqs)
        return [seq.token_ids[len(p) :] for seq, p in zip(seqs, prompts, strict=True)]

    def release(self, seqs: list[Seq]) -> None:
        """Return every page of `seqs` to the pool."""
        for seq in seqs:
            self.pool.decref(seq.pages)
            seq.pages = []


def sync() -> None:
    """Wait for the GPU (timings count finished work only)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_s(runs: int, fn) -> float:
    """Median wall seconds of `runs` calls of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def prompt_ids(count: int, vocab: int, offset: int = 0) -> list[int]:
    """Deterministic pseudo-random token ids."""
    return [(offset * 7919 + i * 104729 + 17) % vocab for i in range(count)]


def hf_model(config: ModelConfig, weights: dict[str, torch.Tensor], dtype, device):
    """transformers' LlamaForCausalLM with the same weights (SDPA attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.context_length,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    names |= {f"w{p}": f"self_attn.{p}_proj" for p in "qkvo"}
    names |= {f"w_{p}": f"mlp.{p}_proj" for p in ("gate", "up", "down")}
    state = {
        "model.embed_tokens.weight": weights["embed"],
        "model.norm.weight": weights["final_norm"],
    }
    for key, tensor in weights.items():
        if key.startswith("layers."):
            _, index, name = key.split(".")
            state[f"model.layers.{index}.{names[name]}.weight"] = tensor
    model = LlamaForCausalLM(hf_config)
    model.load_state_dict(state, strict=False)  # lm_head is tied to embed_tokens
    return model.to(device=device, dtype=dtype).eval()


@torch.inference_mode()
def hf_generate(hf, prompts: list[list[int]], num_tokens: int) -> list[list[int]]:
    """Greedy decode with transformers' KV cache (equal-length prompts, one batch)."""
    ids = torch.tensor(prompts, device=hf.device)
    out = hf(input_ids=ids, use_cache=True)
    past, tokens = out.past_key_values, []
    for _ in range(num_tokens):
        step = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(step)
        out = hf(input_ids=step, past_key_values=past, use_cache=True)
        past = out.past_key_values
    return torch.cat(tokens, dim=1).tolist() if tokens else [[] for _ in prompts]


def throughput_rows(ours: Runner, hf, plan: Plan, vocab: int) -> dict[str, dict]:
    """Prefill and decode tokens/s, ragkv vs transformers."""
    rows: dict[str, dict] = {}
    for length in plan.prefill:
        ids = prompt_ids(length, vocab)
        mine = median_s(plan.runs, lambda ids=ids: ours.generate([ids], 0))
        with torch.inference_mode():
            ref = median_s(plan.runs, lambda ids=ids: hf(torch.tensor([ids], device=hf.device)))
        rows[f"prefill_{length}_tok_per_s"] = {"ragkv": length / mine, "transformers": length / ref}
    prompt_len, count = plan.prefill[0], plan.decode_tokens
    for streams in (1, plan.streams):
        prompts = [prompt_ids(prompt_len, vocab, offset=s) for s in range(streams)]
        # Decode time = generate(prompt, n) - generate(prompt, 0): the prefill is subtracted.
        mine = median_s(plan.runs, lambda p=prompts: ours.generate(p, count))
        mine -= median_s(plan.runs, lambda p=prompts: ours.generate(p, 0))
        ref = median_s(plan.runs, lambda p=prompts: hf_generate(hf, p, count))
        ref -= median_s(plan.runs, lambda p=prompts: hf_generate(hf, p, 0))
        rows[f"decode_{streams}_streams_tok_per_s"] = {
            "ragkv": streams * count / max(mine, 1e-9),
            "transformers": streams * count / max(ref, 1e-9),
        }
    return rows


def rag_ttft_row(model: LlamaModel, plan: Plan, vocab: int) -> dict[str, float]:
    """TTFT of a blended prefill (chunk KV cached on the device) vs a full prefill."""
    chunks = [prompt_ids(plan.chunk_tokens, vocab, offset=100 + i) for i in range(plan.chunks)]
    head, question = prompt_ids(8, vocab, 1), prompt_ids(24, vocab, 2)
    spans, prompt = [], list(head)
    for chunk in chunks:
        spans.append(ChunkSpan(len(prompt), len(chunk)))
        prompt += chunk
    prompt += question
    ids = torch.tensor(prompt, device=model.device)
    full = make_selector(KVReuse.FULL)
    cached = []
    for chunk in chunks:
        kv = place_chunks(model, len(chunk), [], [])
        cached.append(
            blended_prefill(model, torch.tensor(chunk, device=model.device), kv, [], full).kv
        )

    def blend():
        kv = place_chunks(model, len(prompt), cached, spans)
        return blended_prefill(model, ids, kv, spans, make_selector(KVReuse.CACHEBLEND, 0.15))

    def full_prefill():
        return blended_prefill(model, ids, place_chunks(model, len(prompt), [], []), [], full)

    blend_s, full_s = median_s(plan.runs, blend), median_s(plan.runs, full_prefill)
    reference = full_prefill().logits.float()
    top1 = int(blend().logits.argmax()) == int(reference.argmax())
    return {
        "prompt_tokens": len(prompt),
        "blend_ttft_s": blend_s,
        "full_ttft_s": full_s,
        "speedup": full_s / blend_s,
        "top1_same_as_full": top1,
    }


def quality_row(triton_model: LlamaModel, torch_model: LlamaModel, hf, plan: Plan, vocab: int):
    """Max |logit diff| on one prefill (Triton vs torch backend, Triton vs transformers) and
    greedy agreement of the Triton and torch backends over the decode."""
    ids = prompt_ids(plan.prefill[0], vocab)
    with torch.inference_mode():
        hf_logits = hf(torch.tensor([ids], device=hf.device)).logits[0, -1].float()
    runs = [Runner(m, len(ids) + plan.decode_tokens + 1, 2) for m in (triton_model, torch_model)]
    last = [r.run([Seq(list(ids))], [len(ids)])[0].float() for r in runs]
    tokens = [r.generate([ids], plan.decode_tokens)[0] for r in runs]
    same = sum(a == b for a, b in zip(*tokens, strict=True))
    return {
        "max_abs_logit_diff_vs_torch_backend": float((last[0] - last[1]).abs().max()),
        "max_abs_logit_diff_vs_transformers": float((last[0] - hf_logits).abs().max()),
        "greedy_agreement_vs_torch_backend": same / max(1, plan.decode_tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape", default="smollm2-135m", choices=[s for s in SHAPES if s != "tiny"]
    )
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, CPU interpreter")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        sys.exit("no CUDA device: run with --dry-run to exercise the script on the CPU")
    plan = Plan() if on_gpu else DRY_PLAN
    shape = args.shape if on_gpu else "tiny"
    dtype = DTYPES[args.dtype] if on_gpu else torch.float32
    device = "cuda" if on_gpu else "cpu"
    config = model_config(shape)
    weights = random_weights(config, seed=0)
    models = {b: LlamaModel(config, weights, dtype, device, backend=b) for b in ("triton", "torch")}
    hf = hf_model(config, weights, dtype, device)
    max_tokens = max(plan.prefill) + plan.decode_tokens + 1
    ours = Runner(models["triton"], max_tokens, plan.streams)
    rows = throughput_rows(ours, hf, plan, config.vocab_size)
    result = {"machine": machine(), "shape": shape, "dtype": str(dtype), "device": device}
    result |= {"dry_run": args.dry_run, "rows": rows}
    result["rag_ttft"] = rag_ttft_row(models["triton"], plan, config.vocab_size)
    result["quality"] = quality_row(models["triton"], models["torch"], hf, plan, config.vocab_size)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def print_table(result: dict) -> None:
    """The rows as a plain table, each with ragkv / transformers."""
    print(f"{result['shape']} {result['dtype']} on {result['device']}: {result['machine']}")
    for name, row in result["rows"].items():
        ratio = row["ragkv"] / row["transformers"]
        ours, ref = row["ragkv"], row["transformers"]
        print(f"  {name:34s} ragkv {ours:12.1f}  transformers {ref:12.1f}  x{ratio:.2f}")
    rag = result["rag_ttft"]
    blend_ms, full_ms = rag["blend_ttft_s"] * 1e3, rag["full_ttft_s"] * 1e3
    print(
        f"  rag_ttft ({rag['prompt_tokens']} tokens)  blend {blend_ms:.1f} ms  "
        f"full {full_ms:.1f} ms  x{rag['speedup']:.2f}"
    )
    print(f"  quality {result['quality']}")
    if result["dry_run"]:
        print("  (dry run: tiny shape on the CPU interpreter; the figures are not timings)")


if __name__ == "__main__":
    main()
