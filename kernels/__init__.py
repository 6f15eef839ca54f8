"""ragkv.kernels: compute ops (attention, RoPE, norms) with torch references; Triton on CUDA.

`ops` is the one interface the engine calls; today every op is the torch reference.
"""
