"""One `Backend` for every command that works on this machine or through a control plane (`--server`): the local
one calls the layers in this process; the remote one (remote.py) calls the control plane's REST API. Both return
the same typed models (each layer's `schemas` module), so a command is written once and its `--json` is the same
document either way."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import MFError

if TYPE_CHECKING:
    from ..accounts.ledger import Invoice
    from ..accounts.schemas import InvoiceOut, TenantCreated
    from ..accounts.tenants import TenantInfo
    from ..compute.schemas import JobDetail, JobOut
    from ..data.schemas import DatasetAdded, DatasetVersionOut
    from ..factory.schemas import OrderDetail, OrderSubmitted
    from ..registry.schemas import ModelDetail, ModelSummary

ORDER_CPU = 1.0  # `mf order submit` defaults: CPUs and memory (GB) per stage job
ORDER_MEMORY_GB = 2.0


class Backend(Protocol):
    """What `mf` asks of wherever the factory lives."""

    hint: str  # appended to follow-up commands it suggests ('' here; ' --server URL' remotely)

    def add_dataset(self, name: str, path: Path, *, text: str, label: str, image: str | None,
                    skip_bad_rows: bool, unlabeled: Path | None) -> DatasetAdded: ...

    def dataset_versions(self) -> list[DatasetVersionOut]: ...

    def models(self) -> list[ModelSummary]: ...

    def model(self, ref: str) -> ModelDetail: ...

    def onnx_where(self, model: ModelDetail) -> str: ...

    def promote(self, name: str, version: int, alias: str) -> None: ...

    def tenants(self) -> list[TenantInfo]: ...

    def add_tenant(self, name: str, *, weight: float, cpu_hours_month: float | None,
                   gpu_hours_month: float | None, max_slots: int | None) -> TenantCreated: ...

    def jobs(self, *, tenant: str | None, state: str | None, order: int | None) -> list[JobOut]: ...

    def job(self, job_id: int) -> JobDetail: ...

    def cancel_job(self, job_id: int) -> int: ...

    def submit_order(self, spec_file: Path, *, tenant: str | None, priority: str, cpu: float, memory_gb: float,
                     skip_bad_rows: bool) -> OrderSubmitted: ...

    def order(self, order_id: int) -> OrderDetail: ...

    def usage(self, tenant: str | None, month: str | None) -> InvoiceOut: ...

    def usage_csv(self, tenant: str, month: str) -> str: ...


def backend(server: str | None, api_key: str | None) -> Backend:
    """The control plane named by --server / MF_SERVER, or this machine's database."""
    if (server or "").strip():
        from .remote import RemoteBackend

        return RemoteBackend(server, api_key)
    return LocalBackend()


class LocalBackend:
    """The layers, in this process, over this machine's MF_HOME and database (parameters as in `Backend`)."""

    hint = ""

    def add_dataset(self, name, path, *, text, label, image, skip_bad_rows, unlabeled) -> DatasetAdded:
        from ..data import versions
        from ..data.schemas import added

        return added(versions.add_file(name, path, versions.roles_for(path, text=text, label=label, image=image),
                                       skip_bad_rows=skip_bad_rows, unlabeled=unlabeled))

    def dataset_versions(self) -> list[DatasetVersionOut]:
        from ..data import versions
        from ..data.schemas import version_out

        return [version_out(r) for r in versions.list_versions()]

    def models(self) -> list[ModelSummary]:
        from .. import registry
        from ..registry.schemas import model_summary

        return [model_summary(r) for r in registry.list_models()]

    def model(self, ref) -> ModelDetail:
        from .. import registry
        from ..registry.schemas import model_detail

        return model_detail(registry.resolve(ref))

    def onnx_where(self, model) -> str:
        return f"ONNX: {model.onnx_path}"

    def promote(self, name, version, alias) -> None:
        from .. import registry

        registry.promote(name, version, alias)

    def tenants(self) -> list[TenantInfo]:
        from ..accounts.tenants import list_tenants

        return list_tenants()

    def add_tenant(self, name, *, weight, cpu_hours_month, gpu_hours_month, max_slots) -> TenantCreated:
        from ..accounts.schemas import TenantCreated
        from ..accounts.tenants import add_tenant

        info, key = add_tenant(name, weight=weight, cpu_hours_month=cpu_hours_month,
                               gpu_hours_month=gpu_hours_month, max_slots=max_slots)
        return TenantCreated(tenant=info, api_key=key)

    def jobs(self, *, tenant, state, order) -> list[JobOut]:
        from ..compute import jobs
        from ..compute.schemas import job_out

        return [job_out(j) for j in jobs.list_jobs(tenant=tenant, state=state, order_id=order)]

    def job(self, job_id) -> JobDetail:
        from ..compute import jobs
        from ..compute.schemas import job_detail

        return job_detail(jobs.describe(job_id))

    def cancel_job(self, job_id) -> int:
        from ..compute import jobs

        return jobs.cancel(job_id).id

    def submit_order(self, spec_file, *, tenant, priority, cpu, memory_gb, skip_bad_rows) -> OrderSubmitted:
        from ..factory.jobkinds import submit_order
        from ..factory.schemas import submitted
        from ..factory.spec import load_spec

        return submitted(submit_order(load_spec(spec_file), tenant=tenant, priority=priority, cpu=cpu,
                                      memory_gb=memory_gb, skip_bad_rows=skip_bad_rows))

    def order(self, order_id) -> OrderDetail:
        from ..factory.jobkinds import order_status
        from ..factory.schemas import order_detail

        return order_detail(order_status(order_id))

    def _invoice(self, tenant: str | None, month: str | None) -> Invoice:
        from ..accounts.ledger import invoice
        from ..compute.jobs import names
        from ..store import utcnow

        if not tenant:
            raise MFError("name the tenant to invoice: --tenant NAME")
        return invoice(tenant, month or f"{utcnow():%Y-%m}", job_names=names)

    def usage(self, tenant, month) -> InvoiceOut:
        from ..accounts.schemas import invoice_out

        return invoice_out(self._invoice(tenant, month))

    def usage_csv(self, tenant, month) -> str:
        return self._invoice(tenant, month).csv_text()
