"""llama.cpp decode baseline for `bench_engine.py`, run by an interpreter that has
`llama-cpp-python` (kept out of ragkv's dependencies; it compiles from source):

    /path/to/other/python benchmarks/llama_cpp_decode.py MODEL.gguf --threads 2 --tokens 64

Feeds a 32-token prompt, then decodes `--tokens` tokens greedily one at a time (argmax of
the last logits, EOS ignored, the same work as ragkv's single-stream decode) and prints one
JSON line: {"decode_tok_per_s", "prefill_32_s", "llama_cpp_python"}. Only stdlib + numpy +
llama_cpp: ragkv is not importable there.
"""

from __future__ import annotations

import argparse
import json
import time

import llama_cpp
import numpy as np


def next_token(llm: llama_cpp.Llama) -> int:
    """Argmax of the last position's logits (a numpy row; `eval_logits` would copy every
    row into Python lists each step)."""
    return int(np.argmax(llm.scores[llm.n_tokens - 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=512,
        logits_all=False,
        verbose=False,
    )
    prompt = [(1000 + 37 * i) % 40000 + 100 for i in range(32)]
    started = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - started
    for _ in range(8):  # warm-up decode steps, not timed
        llm.eval([next_token(llm)])
    llm.reset()
    llm.eval(prompt)
    started = time.perf_counter()
    for _ in range(args.tokens):
        llm.eval([next_token(llm)])
    decode = args.tokens / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "decode_tok_per_s": decode,
                "prefill_32_s": prefill_s,
                "llama_cpp_python": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
