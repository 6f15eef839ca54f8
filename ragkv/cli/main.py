"""Command line: `ragkv serve | ingest | ask | stats`, `ragkv --version`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from ragkv import __version__
from ragkv.errors import RagkvError
from ragkv.settings import Settings

app = typer.Typer(help="ragkv: cache-aware serving middleware for RAG and agents.")
log = logging.getLogger("ragkv")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (default: $RAGKV_CONFIG)")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ragkv {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """ragkv: cache-aware serving middleware for RAG and agents."""


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from env/file/defaults with CLI overrides; exits with the message on error."""
    try:
        return Settings.load(config, **overrides)
    except RagkvError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def configure_logging(level: str) -> None:
    """Plain log lines on stderr; the access log lines are JSON themselves."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000)")] = None,
    replicas: Annotated[
        int | None, typer.Option(help="Engine replicas on Ray Serve (extra ragkv[ray])")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (auto, ray://host:port)")
    ] = None,
) -> None:
    """Run the OpenAI-compatible gateway (with --replicas: on Ray Serve)."""
    overrides: dict[str, Any] = {}
    server = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if server:
        overrides["server"] = server
    cluster = {k: v for k, v in (("replicas", replicas), ("ray_address", ray_address)) if v}
    if cluster:
        overrides["cluster"] = cluster
    settings = load_settings(config, **overrides)
    configure_logging(settings.server.log_level)
    bind = settings.server.host
    if not settings.auth.enabled and bind not in LOOPBACK:
        log.warning("auth is off (no API keys configured): binding to 127.0.0.1, not %s", bind)
        bind = "127.0.0.1"
    if cluster:
        serve_cluster(settings, bind)
        return
    import uvicorn

    from ragkv.server.app import build_app

    uvicorn.run(
        build_app(settings),
        host=bind,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.server.shutdown_drain_s,
    )


def serve_cluster(settings: Any, bind: str) -> None:
    """`ragkv serve --replicas N`: the gateway on Ray Serve (needs the extra `ragkv[ray]`)."""
    try:
        from ragkv.cluster.app import run_cluster
    except ImportError as exc:
        typer.echo(f"error: --replicas needs Ray Serve ({exc}); pip install 'ragkv[ray]'", err=True)
        raise typer.Exit(2) from exc
    run_cluster(settings, bind)


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help=".txt, .md or .jsonl files, or folders of them")
    ] = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection name (default: 'wikipedia' for the sample)")
    ] = None,
    wikipedia_sample: Annotated[
        bool, typer.Option("--wikipedia-sample", help="Ingest the 10,033 Wikipedia leads")
    ] = False,
    tenant: Annotated[str, typer.Option(help="Tenant owning the collection")] = "default",
    config: ConfigOption = None,
) -> None:
    """Chunk, embed and index documents into a collection (created when missing)."""
    from rich.console import Console

    from ragkv.cli.ingest import collect_documents, run_ingest

    settings = load_settings(config)
    configure_logging("warning")
    name = collection or ("wikipedia" if wikipedia_sample else None)
    if name is None or not (paths or wikipedia_sample):
        typer.echo("error: give PATH... and --collection NAME, or --wikipedia-sample", err=True)
        raise typer.Exit(2)
    console = Console(stderr=True)
    try:
        documents = collect_documents(list(paths or []), wikipedia_sample)
        if not documents:
            typer.echo("error: no .txt, .md or .jsonl documents found", err=True)
            raise typer.Exit(1)
        num_docs, num_chunks, seconds = run_ingest(settings, documents, name, tenant, console)
    except RagkvError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    console.print(
        f"ingested {num_docs} documents, {num_chunks} chunks into '{name}' in {seconds:.1f} s "
        f"({num_chunks / max(seconds, 1e-9):.1f} chunks/s)"
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="What to ask the model")],
    system: Annotated[str | None, typer.Option(help="System prompt (default: the model's)")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed")] = None,
    collection: Annotated[
        str | None,
        typer.Option(help="Answer from this collection: through a running server, else locally"),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Chunks retrieved with --collection")] = 4,
    url: Annotated[str, typer.Option(help="Server for --collection")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="RAGKV_API_KEY", help="Tenant key for --collection")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Stream an answer from the local model, without a server; with --collection, answer
    from a collection (through the server at --url when one answers, else in this process
    over the local data directory) and print the sources."""
    if collection is not None:
        args = (question, collection, top_k, max_tokens, temperature)
        if not _ask_collection(*args, url, api_key):
            typer.echo(f"no server at {url}: answering locally (this loads the model)", err=True)
            _ask_collection_locally(*args, load_settings(config))
        return
    import time
    import uuid

    from ragkv.assets import generation_model_path
    from ragkv.engine.engine import LLMEngine
    from ragkv.engine.sampling import SamplingParams
    from ragkv.engine.sequence import Request

    settings = load_settings(config)
    configure_logging("warning")
    try:
        path = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
        engine = LLMEngine.from_path(path, settings.model, settings.engine)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        prompt_ids = engine.tokenizer.apply_chat_template(messages)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        request = Request(uuid.uuid4().hex, prompt_ids, params)
        started = time.perf_counter()
        final = None
        for output in engine.stream_sync(request):
            typer.echo(output.text, nl=False)
            final = output
    except RagkvError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("")
    if final is not None:
        seconds = time.perf_counter() - started
        typer.echo(
            f"[{final.prompt_tokens} prompt + {final.completion_tokens} generated tokens, "
            f"TTFT {final.ttft_ms:.0f} ms, {final.completion_tokens / seconds:.1f} tokens/s]",
            err=True,
        )


def _ask_collection_locally(
    question: str,
    collection: str,
    top_k: int,
    max_tokens: int,
    temperature: float,
    settings: Any,
) -> None:
    """`ragkv ask --collection` with no server: the pipeline opened in this process."""
    from ragkv.cli.local_rag import ask_locally

    configure_logging("warning")
    try:
        answer = ask_locally(settings, question, collection, top_k, max_tokens, temperature)
    except RagkvError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(answer.text.strip())
    _echo_sources(answer.sources)
    typer.echo(f"[chunk tokens reused {answer.report.get('chunk_tokens_reused')}]", err=True)


def _echo_sources(sources: list[tuple[str, float | None]]) -> None:
    """`[n] name (score)` of each source of an answer, on stderr."""
    for number, (name, score) in enumerate(sources, start=1):
        suffix = f" ({score:.3f})" if score is not None else ""
        typer.echo(f"[{number}] {name}{suffix}", err=True)


def _ask_collection(
    question: str,
    collection: str,
    top_k: int,
    max_tokens: int,
    temperature: float,
    url: str,
    api_key: str | None,
) -> bool:
    """`ragkv ask --collection`: one RAG answer through the server's SDK call; False when no
    server answers at `url`."""
    from ragkv.sdk import Client
    from ragkv.sdk.errors import APIConnectionError

    try:
        with Client(url, api_key=api_key, timeout=300, max_retries=0) as client:
            answer = client.rag(question, collection=collection, top_k=top_k,
                                max_tokens=max_tokens, temperature=temperature)  # fmt: skip
    except APIConnectionError:
        return False
    except RagkvError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(answer.answer.strip())
    _echo_sources([(s.title or s.document_id, s.score) for s in answer.sources])
    cache = answer.cache
    if cache is not None:
        typer.echo(
            f"[{answer.cache_status}; chunk tokens reused {cache.chunk_tokens_reused}, "
            f"recomputed {cache.tokens_recomputed}, TTFT {cache.ttft_ms} ms]",
            err=True,
        )
    return True


@app.command()
def stats(
    url: Annotated[str, typer.Option(help="The server's base URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="RAGKV_ADMIN_KEY", help="Admin key (when auth is on)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON")] = False,
    watch: Annotated[
        float | None, typer.Option(min=0.5, help="Refresh every N seconds until Ctrl-C")
    ] = None,
) -> None:
    """Cache statistics of a running server: semantic (by category and tenant), prefix, chunk."""
    import json
    import time

    from rich.console import Console
    from rich.live import Live

    from ragkv.cli.stats import render
    from ragkv.sdk import Client

    with Client(url, api_key=api_key, timeout=30) as client:
        try:
            report = client.admin.stats()
            if as_json:
                typer.echo(json.dumps(report, indent=2))
                return
            if watch is None:
                Console().print(render(report))
                return
            with Live(render(report), refresh_per_second=2) as live:
                while True:
                    time.sleep(watch)
                    live.update(render(client.admin.stats()))
        except RagkvError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            return


if __name__ == "__main__":
    app()
