"""The `ragkv` command line: `serve`, `ingest`, `ask`, `stats`."""
