"""`mf tenants add|set|ls`, `mf jobs ls|show|cancel|submit` and `mf usage`: the compute pool's tenants, jobs and
invoices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..errors import MFError
from .backend import backend
from .common import (
    STATE_STYLE,
    ApiKeyOpt,
    JsonFlag,
    ServerOpt,
    app,
    console,
    group,
    hours,
    output,
    print_json,
    when,
)

if TYPE_CHECKING:
    from ..accounts.tenants import TenantInfo
    from ..compute.schemas import JobOut

tenants_app = group("tenants", "Tenants of the compute pool: API keys, weights, quotas.")
jobs_app = group("jobs", "Jobs on the compute pool.")


def _duration(text: str | None) -> float | None:
    """'90', '90s', '30m', '2h', '1d' -> seconds."""
    if text is None:
        return None
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise MFError(f"bad duration '{text}': use e.g. 90s, 30m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@tenants_app.command("add")
def tenants_add(name: str,
                weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
                cpu_hours: Annotated[float | None, typer.Option(help="Hard quota: CPU-hours per month.")] = None,
                gpu_hours: Annotated[float | None, typer.Option(help="Hard quota: GPU-hours per month.")] = None,
                max_slots: Annotated[int | None, typer.Option(help="Soft limit: concurrent slots.")] = None,
                as_json: JsonFlag = False, server: ServerOpt = None,
                api_key: Annotated[str | None, typer.Option(
                    "--api-key", envvar="MF_API_KEY", show_envvar=True, metavar="KEY",
                    rich_help_panel="Remote control plane", help="An admin API key for --server.")] = None) -> None:
    """Add a tenant and print its API key (shown this once; only its hash is stored)."""
    created = backend(server, api_key).add_tenant(name, weight=weight, cpu_hours_month=cpu_hours,
                                                  gpu_hours_month=gpu_hours, max_slots=max_slots)
    if as_json:
        print_json(created)
        return
    t = created.tenant
    console.print(f"tenant [bold]{t.name}[/] added · weight {t.weight:g} · "
                  f"CPU-h/month {hours(t.cpu_hours_month)} · GPU-h/month {hours(t.gpu_hours_month)} · "
                  f"max slots {hours(t.max_slots)}")
    console.print(f"API key (shown once, keep it): [bold]{created.api_key}[/]", soft_wrap=True)


@tenants_app.command("set")
def tenants_set(name: str,
                weight: Annotated[float | None, typer.Option(help="Fair-share weight.")] = None,
                cpu_hours: Annotated[float | None, typer.Option(help="CPU-hours per month (-1: unlimited).")] = None,
                gpu_hours: Annotated[float | None, typer.Option(help="GPU-hours per month (-1: unlimited).")] = None,
                max_slots: Annotated[int | None, typer.Option(help="Concurrent slots (-1: unlimited).")] = None,
                network: Annotated[bool | None, typer.Option(
                    "--network/--no-network", help="Let the tenant's command jobs use the network (default: "
                                                   "none, in a fresh network namespace).")] = None,
                urgent: Annotated[bool | None, typer.Option(
                    "--urgent/--no-urgent", help="Let the tenant submit priority 'urgent' (preempts other tenants' "
                                                 "jobs; default: not allowed).")] = None,
                ) -> None:
    """Change a tenant's weight, quotas, network grant or right to use priority 'urgent'."""
    from ..accounts.tenants import UNSET, set_tenant

    def lim(v):
        return UNSET if v is None else (None if v < 0 else v)

    t = set_tenant(name, weight=weight, cpu_hours_month=lim(cpu_hours), gpu_hours_month=lim(gpu_hours),
                   max_slots=lim(max_slots), urgent=urgent)
    if network is not None:
        from ..compute.grants import set_network

        set_network(t.name, network)
        console.print(f"tenant [bold]{t.name}[/]: command jobs {'may use' if network else 'get no'} network")
    console.print(f"tenant [bold]{t.name}[/] · weight {t.weight:g} · CPU-h/month {hours(t.cpu_hours_month)} "
                  f"· GPU-h/month {hours(t.gpu_hours_month)} · max slots {hours(t.max_slots)}"
                  + (" · may use urgent" if t.urgent else ""))


@tenants_app.command("ls")
def tenants_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List tenants with their weights and quotas (keys are never shown again)."""
    output(backend(server, api_key).tenants(), as_json, _tenants_table)


def _tenants_table(rows: list[TenantInfo]) -> Table:
    table = Table("tenant", "weight", "CPU-h/month", "GPU-h/month", "max slots", "created")
    for t in rows:
        table.add_row(t.name, f"{t.weight:g}", hours(t.cpu_hours_month), hours(t.gpu_hours_month),
                      hours(t.max_slots), when(t.created))
    return table


def _jobs_table(rows: list[JobOut]) -> Table:
    table = Table("job", "tenant", "name", "prio", "state", "try", "worker", "note")
    for j in rows:
        note = j.last_error if j.state == "failed" else (j.waiting or "")
        if j.preempt_requested:
            note = "preempting"
        elif (j.result or {}).get("resumed_from_step"):
            note = f"resumed from step {j.result['resumed_from_step']}"
        style = STATE_STYLE.get(j.state, "")
        table.add_row(str(j.id), j.tenant, j.name, j.priority, f"[{style}]{j.state}[/]", str(j.attempts),
                      j.lease_worker or j.worker or "", (note or "")[:60])
    return table


@jobs_app.command("ls")
def jobs_ls(tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
            state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
            order: Annotated[int | None, typer.Option(help="Only this order's jobs.")] = None,
            as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List jobs, oldest first (state, attempts, worker, why a queued job waits)."""
    output(backend(server, api_key).jobs(tenant=tenant, state=state, order=order), as_json, _jobs_table)


@jobs_app.command("show")
def jobs_show(job_id: int, as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A job with its history: every state change with its time, reason, attempt and worker."""
    job = backend(server, api_key).job(job_id)
    if as_json:
        print_json(job)
        return
    console.print(_jobs_table([job]))
    table = Table("at", "from", "to", "try", "worker", "reason", title="history")
    for e in job.events:
        table.add_row(when(e.at), e.from_state or "", e.to, str(e.attempt), e.worker or "", e.reason)
    console.print(table)
    if job.result:
        console.print(f"result: {json.dumps(job.result, default=str)}", soft_wrap=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Cancel a queued or running job (its dependents are cancelled too)."""
    console.print(f"job {backend(server, api_key).cancel_job(job_id)} [bold]cancelled[/]")


@jobs_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def jobs_submit(ctx: typer.Context,
                tenant: Annotated[str, typer.Option(help="Tenant to run and bill it for.")],
                cpu: Annotated[float, typer.Option(help="CPUs.")] = 1.0,
                gpu: Annotated[float, typer.Option(help="GPUs.")] = 0.0,
                memory_gb: Annotated[float, typer.Option(help="Memory (GB).")] = 1.0,
                time_limit: Annotated[str | None, typer.Option(help="Wall-clock limit, e.g. 30m.")] = None,
                priority: Annotated[str, typer.Option(help="batch | standard | urgent")] = "standard",
                as_json: JsonFlag = False) -> None:
    """Rent the pool: run a command (after `--`) in a fresh sandboxed working directory, metered."""
    from ..compute import jobs
    from ..compute.schemas import JobSubmitted

    spec = jobs.command_spec(list(ctx.args), cpu=cpu, gpu=gpu, memory_gb=memory_gb,
                             time_limit_s=_duration(time_limit), priority=priority)
    job_id = jobs.submit(tenant, spec)
    if as_json:
        print_json(JobSubmitted(job=job_id))
    else:
        console.print(f"job [bold]{job_id}[/] queued for tenant {tenant}: {spec.name}", soft_wrap=True)


@app.command()
def usage(tenant: Annotated[str | None, typer.Option(
              help="Tenant to invoice (required, except with --server and a tenant's key: that tenant).")] = None,
          month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month, UTC).")] = None,
          csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write the invoice as CSV.")] = None,
          as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A tenant's invoice for a month: every attempt with its resource-hours, outcome and cost (preempted and
    lost work included: it used the pool), and its models' inference (mf serve), one line per model version."""
    b = backend(server, api_key)
    inv = b.usage(tenant, month)
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(b.usage_csv(inv.tenant, inv.month), newline="")
    if as_json:
        print_json(inv)
        return
    table = Table("job", "name", "order", "try", "worker", "ended", "outcome", "CPU-h", "GPU-h",
                  f"cost ({inv.currency})", title=f"usage: {inv.tenant}, {inv.month}")
    for line in inv.lines:
        style = "green" if line.outcome == "succeeded" else "yellow" if line.outcome == "preempted" else "red"
        table.add_row(str(line.job), line.name, str(line.order or ""), str(line.attempt), line.worker or "",
                      line.ended, f"[{style}]{line.outcome}[/]", f"{line.cpu_hours:.4f}", f"{line.gpu_hours:.4f}",
                      f"{line.cost:.4f}")
    for inf in inv.inference:  # serving (mf serve), one line per model version
        table.add_row("", f"{inf.model}@{inf.version}", "", "", f"{inf.requests} req / {inf.rows} rows", inf.last,
                      "[cyan]inference[/]", f"{inf.cpu_hours:.4f}", "0.0000", f"{inf.cost:.4f}")
    table.add_section()
    table.add_row("", "total", "", "", "", "", "", f"{inv.cpu_hours:.4f}", f"{inv.gpu_hours:.4f}",
                  f"[bold]{inv.total:.4f}[/]")
    console.print(table)
    parts = ", ".join(f"{k} {v:.4f}" for k, v in inv.by_outcome.items())
    if parts:
        console.print(f"by outcome: {parts}")
    if csv_path:
        console.print(f"csv: {csv_path}", soft_wrap=True)
