"""The model runner: weights, paged KV pool, scheduler, prefill/decode, sampling."""
