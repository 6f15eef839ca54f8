"""The category-aware semantic cache: hnswlib vectors per partition, entries in lmdb,
per-category policies, classifier, guard, load adaptation, verified mode, single-flight."""
