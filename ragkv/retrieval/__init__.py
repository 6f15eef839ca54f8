"""Retrieval: chunker, embedder, FAISS index, SQLAlchemy document store.

Never imports engine, pipeline or server.
"""
