"""Cache data structures: semantic cache, radix prefix tree, chunk KV store.

Never imports engine, pipeline or server: tensors and page ids are passed in.
"""
