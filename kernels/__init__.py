"""ragkv.kernels: compute ops (attention, RoPE, norms) with torch references; Triton on CUDA."""
