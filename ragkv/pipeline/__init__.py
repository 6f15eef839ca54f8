"""One request's way through ragkv: semantic probe -> context -> prompt -> engine ->
store-back. Routes call `Pipeline`; the pipeline calls the engine, caches and retrieval."""
