"""Cache data structures, cut by concept: `kv` (radix prefix tree, chunk KV store and its
tiers) and `semantic` (the category-aware semantic cache).

Never imports engine, pipeline or server: tensors, page ids and vectors are passed in.
"""
