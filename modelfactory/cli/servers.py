"""`mf worker`, `mf server` (the control plane), `mf serve` (OIP v2) and `mf serve-llm` (OpenAI-compatible)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..errors import MFError
from .common import app, console, err


@app.command()
def worker(cpu: Annotated[float | None, typer.Option(help="CPUs to offer (default: all).")] = None,
           gpu: Annotated[float, typer.Option(help="GPUs to offer.")] = 0.0,
           memory_gb: Annotated[float | None, typer.Option(help="Memory to offer, GB (default: 80%).")] = None,
           worker_id: Annotated[str | None, typer.Option("--id", help="Worker id (default: host-pid).")] = None,
           allow_unisolated: Annotated[bool, typer.Option(
               "--allow-unisolated", help="Run tenants' commands as this worker's own user when they cannot be "
                                          "isolated (not root, no bubblewrap). Single-user machines only.")]
           = False,
           ) -> None:
    """Run a pool worker: take jobs leased to it by the scheduler (`mf server`), each in its own process."""
    if allow_unisolated:
        os.environ["MF_ALLOW_UNISOLATED"] = "1"
    from ..compute.worker import Capacity, PoolWorker, default_capacity

    d = default_capacity()
    PoolWorker(worker_id, Capacity(cpu=cpu or d.cpu, gpu=gpu, memory_gb=memory_gb or d.memory_gb)).run()


@app.command()
def server(workers: Annotated[int, typer.Option(help="Local worker processes to run.")] = 1,
           policy: Annotated[str | None, typer.Option(help="Scheduling policy: fifo, priority, fair.")] = None,
           worker_cpu: Annotated[float | None, typer.Option(help="CPUs each local worker offers.")] = None,
           worker_memory_gb: Annotated[float | None, typer.Option(help="Memory each local worker offers.")] = None,
           host: Annotated[str, typer.Option(help="Address of the control plane (REST API + dashboard).")]
           = "127.0.0.1",
           port: Annotated[int, typer.Option(help="Port of the control plane.")] = 8080,
           api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the REST API and dashboard.")] = True,
           init: Annotated[bool, typer.Option("--init", help="Create an admin API key, print it once, and exit.")]
           = False,
           log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
           allow_unisolated: Annotated[bool, typer.Option(
               "--allow-unisolated", help="Run tenants' commands as this worker's own user when they cannot be "
                                          "isolated (not root, no bubblewrap). Single-user machines only.")]
           = False,
           ) -> None:
    """Run the control plane: the REST API (/api/v1, docs at /docs) and dashboard (/) on HOST:PORT, the scheduler
    and N local workers. Restartable: all state is in the database. Admin access: `mf server --init` prints an
    admin key, or set MF_ADMIN_KEY."""
    from ..compute.pool import run_server
    from ..compute.poolconfig import pool_config

    if allow_unisolated:  # read by the local workers it starts (they inherit the environment)
        os.environ["MF_ALLOW_UNISOLATED"] = "1"

    if init:
        from ..accounts.tenants import init_admin_key

        info, key, earlier = init_admin_key()
        console.print(f"admin API key {info.id} (shown once, keep it): [bold]{key}[/]", soft_wrap=True)
        if earlier:
            console.print(f"({earlier} earlier admin key(s) still valid: revoke with DELETE /api/v1/keys/ID)")
        return
    cfg = pool_config().with_(policy=policy)
    err.print(f"mf server: policy {cfg.policy}, {workers} local worker(s), lease {cfg.lease_timeout_s:g} s"
              + (f"; control plane http://{host}:{port} (API /api/v1, docs /docs)" if api else "")
              + "; Ctrl-C stops (running jobs checkpoint and are requeued)", soft_wrap=True)
    if not api:
        run_server(workers=workers, config=cfg, worker_cpu=worker_cpu, worker_memory_gb=worker_memory_gb)
        return
    from ..api.server import run_control_plane

    run_control_plane(host=host, port=port, workers=workers, config=cfg, worker_cpu=worker_cpu,
                      worker_memory_gb=worker_memory_gb, log_level=log_level)


@app.command()
def serve(models: Annotated[str | None, typer.Option(
              help="Models to load at startup: name, name@3 or name@alias, comma-separated (others load on their "
                   "first request).")] = None,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8000,
          max_batch_size: Annotated[int, typer.Option(help="Most rows in one batch (and in one request).")] = 32,
          max_queue_delay_us: Annotated[int, typer.Option(
              help="Longest a request waits for its batch to fill, in microseconds.")] = 2000,
          preferred_batch_size: Annotated[str | None, typer.Option(
              help="Batch sizes dispatched without waiting, comma-separated, e.g. 8,16.")] = None,
          max_queue_size: Annotated[int, typer.Option(help="Requests a model may queue; beyond, 503.")] = 256,
          no_batching: Annotated[bool, typer.Option("--no-batching", help="Run every request alone.")] = False,
          max_loaded: Annotated[int | None, typer.Option(help="Most models loaded at once (LRU unload).")] = None,
          max_loaded_mb: Annotated[float | None, typer.Option(
              help="Most MB of loaded model files (LRU unload).")] = None,
          threads: Annotated[int | None, typer.Option(help="onnxruntime threads per model (default: all cores).")]
          = None,
          auth: Annotated[bool, typer.Option("--auth", help="Require 'Authorization: Bearer <tenant API key>'; a "
                                                            "tenant sees only its models (or MF_SERVE_AUTH=1).")]
          = False,
          explicit: Annotated[bool, typer.Option("--explicit", help="Serve only loaded models (no load on demand); "
                                                                    "load more through the repository API.")]
          = False,
          meter_interval: Annotated[float, typer.Option(help="Seconds between usage-ledger writes.")] = 60.0,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
          access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
          insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without --auth "
                                                                    "(trusted networks only).")] = False) -> None:
    """Serve registry models over the Open Inference Protocol v2 REST API (KServe/Triton; tritonclient and curl
    work unmodified), with dynamic batching, LRU model loading, per-tenant keys, metering and /metrics."""
    from ..serve import BatchConfig, ServeSettings, run
    from ..serve.auth import check_bind

    def sizes(text: str | None) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in (text or "").split(",") if x.strip())
        except ValueError:
            raise MFError(f"--preferred-batch-size '{text}': expected integers, e.g. 8,16") from None

    try:
        batch = BatchConfig(max_batch_size=max_batch_size, max_queue_delay_microseconds=max_queue_delay_us,
                            preferred_batch_size=sizes(preferred_batch_size), max_queue_size=max_queue_size,
                            enabled=not no_batching)
    except ValueError as e:
        raise MFError(str(e)) from None
    if max_loaded is not None and max_loaded < 1:
        raise MFError(f"--max-loaded must be >= 1 (got {max_loaded})")
    refs = [m.strip() for m in (models or "").split(",") if m.strip()]
    if refs:  # a typo (or a generative model: `mf serve-llm` serves those) fails here, not in the server's startup
        from .. import registry
        from ..serve.repository import unservable

        for ref in refs:
            why = unservable(registry.resolve(ref))
            if why:
                raise MFError(why)
    use_auth = _serve_auth(auth)
    check_bind(host, use_auth, insecure, "mf serve")
    settings = ServeSettings(models=refs, batch=batch, max_loaded=max_loaded,
                             max_loaded_bytes=int(max_loaded_mb * 1e6) if max_loaded_mb else None, threads=threads,
                             auth=use_auth, load_on_demand=not explicit, meter_interval_s=meter_interval,
                             server_id=f"{host}:{port}/{os.getpid()}")
    err.print(f"mf serve: http://{host}:{port} · Open Inference Protocol v2 · "
              + (f"batching up to {max_batch_size} rows, {max_queue_delay_us} µs delay" if not no_batching
                 else "no batching")
              + f" · auth {'on' if use_auth else 'off'} · models {', '.join(refs) or 'on demand'}; Ctrl-C stops")
    run(settings, host=host, port=port, log_level=log_level, access_log=access_log)


def _serve_auth(flag: bool) -> bool:
    """--auth, or MF_SERVE_AUTH set to a true value: both servers read it the same way."""
    from ..config import settings

    return flag or settings().serve_auth


@app.command("serve-llm")
def serve_llm(base: Annotated[str, typer.Option(help="The base causal LM: a local model dir or a hub id.")],
              base_name: Annotated[str | None, typer.Option(
                  help="The `model` name of the bare base (default: the dir's name, or the hub id).")] = None,
              adapters: Annotated[str | None, typer.Option(
                  help="LoRA adapters to load at startup: name, name@3 or name@alias, comma-separated (others "
                       "load on their first request).")] = None,
              host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="Port.")] = 8001,
              max_adapters: Annotated[int, typer.Option(help="Most adapters loaded at once (LRU eviction).")] = 8,
              max_batch: Annotated[int, typer.Option(help="Most sequences generated together.")] = 16,
              auth: Annotated[bool, typer.Option("--auth", help="Require 'Authorization: Bearer <tenant API key>'; a "
                                                                "tenant sees only its adapters (or MF_SERVE_AUTH=1).")]
              = False,
              meter_interval: Annotated[float, typer.Option(help="Seconds between usage-ledger writes.")] = 60.0,
              log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
              insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without "
                                                                        "--auth (trusted networks only).")]
              = False) -> None:
    """Serve a causal LM and its LoRA adapters from the registry over the OpenAI API (/v1/chat/completions,
    /v1/completions, /v1/models; the openai client works unmodified), all adapters batched together on one base."""
    from ..serve.auth import check_bind
    from ..serve.llm import LLMSettings
    from ..serve.llm import run as run_llm
    from ..serve.llm.adapters import check_adapter

    if max_adapters < 1 or max_batch < 1:
        raise MFError(f"--max-adapters and --max-batch must be >= 1 (got {max_adapters}, {max_batch})")
    refs = [a.strip() for a in (adapters or "").split(",") if a.strip()]
    for ref in refs:  # a typo or a wrong adapter fails here, with a clear message, not in the server's startup
        check_adapter(ref, base)
    use_auth = _serve_auth(auth)
    check_bind(host, use_auth, insecure, "mf serve-llm")
    settings = LLMSettings(base=base, base_name=base_name, adapters=refs, max_adapters=max_adapters,
                           max_batch=max_batch, auth=use_auth, meter_interval_s=meter_interval,
                           server_id=f"{host}:{port}/{os.getpid()}")
    err.print(f"mf serve-llm: http://{host}:{port}/v1 · base {base} · up to {max_batch} sequences together, "
              f"{max_adapters} adapters loaded · auth {'on' if use_auth else 'off'}; Ctrl-C stops")
    run_llm(settings, host=host, port=port, log_level=log_level)
