"""The control plane as a `Backend` (`--server URL`): each call is one of its REST routes (api.client), and the
JSON that comes back is validated into the same typed models the local backend returns. Nothing is read from or
written to this machine's MF_HOME."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from ..accounts.schemas import InvoiceOut, TenantCreated
from ..accounts.tenants import TenantInfo
from ..api.client import ControlPlane
from ..compute.schemas import JobDetail, JobOut
from ..data.schemas import DatasetAdded, DatasetVersionOut
from ..errors import MFError
from ..factory.schemas import OrderDetail, OrderSubmitted
from ..registry.schemas import ModelDetail, ModelSummary
from .backend import ORDER_CPU, ORDER_MEMORY_GB


class RemoteBackend:
    """The control plane at `server`, called with `api_key` (parameters as in `Backend`)."""

    def __init__(self, server: str, api_key: str | None):
        self.cp = ControlPlane(server, api_key)
        self.hint = f" --server {self.cp.url}"

    def add_dataset(self, name, path, *, text, label, image, skip_bad_rows, unlabeled) -> DatasetAdded:
        if unlabeled is not None:
            raise MFError("--unlabeled works on this machine's database only (not yet through --server)")
        return DatasetAdded.model_validate(self.cp.upload_dataset(name, path, text=text, label=label, image=image,
                                                                  skip_bad_rows=skip_bad_rows))

    def dataset_versions(self) -> list[DatasetVersionOut]:
        return [DatasetVersionOut.model_validate(v) for d in self.cp.datasets()
                for v in self.cp.dataset(d["name"])["versions"]]

    def models(self) -> list[ModelSummary]:
        return [ModelSummary.model_validate(m) for m in self.cp.models()]

    def model(self, ref) -> ModelDetail:
        return ModelDetail.model_validate(self.cp.model(ref))

    def onnx_where(self, model) -> str:
        if model.onnx_bytes is None:
            return "ONNX: none in the control plane's store"
        where = self.cp.link(f"/models/{model.name}@{model.version}/onnx")
        return f"ONNX: {model.onnx_bytes / 1e6:.1f} MB · download: {where}"

    def promote(self, name, version, alias) -> None:
        self.cp.promote(name, version, alias)

    def tenants(self) -> list[TenantInfo]:
        return TypeAdapter(list[TenantInfo]).validate_python(self.cp.tenants())

    def add_tenant(self, name, *, weight, cpu_hours_month, gpu_hours_month, max_slots) -> TenantCreated:
        return TenantCreated.model_validate(self.cp.add_tenant(
            name, weight=weight, cpu_hours_month=cpu_hours_month, gpu_hours_month=gpu_hours_month,
            max_slots=max_slots))

    def jobs(self, *, tenant, state, order) -> list[JobOut]:
        rows = [JobOut.model_validate(j) for j in self.cp.jobs(tenant=tenant, state=state, order=order)]
        return sorted(rows, key=lambda j: j.id)  # oldest first, as on this machine (the API lists newest first)

    def job(self, job_id) -> JobDetail:
        return JobDetail.model_validate(self.cp.job(job_id))

    def cancel_job(self, job_id) -> int:
        return self.cp.cancel_job(job_id)["id"]

    def submit_order(self, spec_file: Path, *, tenant, priority, cpu, memory_gb, skip_bad_rows) -> OrderSubmitted:
        given = [flag for flag, on in (("--tenant", tenant is not None), ("--cpu", cpu != ORDER_CPU),
                                       ("--memory-gb", memory_gb != ORDER_MEMORY_GB),
                                       ("--skip-bad-rows", skip_bad_rows)) if on]
        if given:
            raise MFError(f"{', '.join(given)}: not available with --server (the control plane takes the spec and "
                          "--priority; the order belongs to the API key's tenant)")
        if not spec_file.is_file():
            raise MFError(f"{spec_file}: no such order file")
        try:
            text = spec_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MFError(f"{spec_file}: not a text file (expected UTF-8 YAML or JSON)") from None
        kind = "application/json" if spec_file.suffix.lower() == ".json" else "application/yaml"
        return OrderSubmitted.model_validate(self.cp.submit_order(text, content_type=kind, priority=priority))

    def order(self, order_id) -> OrderDetail:
        return OrderDetail.model_validate(self.cp.order(order_id))

    def usage(self, tenant, month) -> InvoiceOut:
        return InvoiceOut.model_validate(self.cp.usage(tenant, month))

    def usage_csv(self, tenant, month) -> str:
        return self.cp.usage_csv(tenant, month)
