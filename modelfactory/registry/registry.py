"""Model versions are immutable rows pointing at an artifact; aliases are movable names for a version.

`name` resolves to the `prod` alias when set, else the latest version; `name@3` and `name@prod` are explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from ..artifacts import ArtifactStore
from ..errors import MFError, NotFound
from ..store import Alias, ModelVersion, session
from ..tasks.base import ONNX_FILE


@dataclass
class ModelRef:
    name: str
    version: int
    tenant: str
    task: str
    artifact_id: str
    metrics: dict
    lineage: dict
    card: str
    aliases: list[str]
    created: str

    @property
    def path(self) -> Path:
        return ArtifactStore().path(self.artifact_id)

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _ref(row: ModelVersion, aliases: list[str]) -> ModelRef:
    return ModelRef(row.name, row.version, row.tenant, row.task, row.artifact_id, row.metrics, row.lineage,
                    row.card, aliases, row.created.isoformat(timespec="seconds"))


def _aliases(s, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for a in s.scalars(select(Alias).where(Alias.name == name)):
        out.setdefault(a.version, []).append(a.alias)
    return out


def register(*, name: str, tenant: str, task: str, artifact_id: str, metrics: dict, lineage: dict,
             card_fn, order_id: int | None = None, aliases: tuple[str, ...] = ()) -> ModelRef:
    """Add a version (idempotent: the same artifact under the same name is the same version). A name belongs to
    the tenant that registered it first: another tenant's order cannot add versions to it."""
    with session() as s:
        check_owner(s, name, tenant)
        row = s.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                  ModelVersion.artifact_id == artifact_id))
        if row is None:
            latest = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0
            row = ModelVersion(name=name, version=latest + 1, tenant=tenant, task=task, artifact_id=artifact_id,
                               metrics=metrics, lineage=lineage, order_id=order_id, card="")
            s.add(row)
            s.flush()
        row.metrics, row.lineage = metrics, lineage
        row.card = card_fn(name, row.version)
        version = row.version
    for alias in ("latest", *aliases):
        promote(name, version, alias)
    return resolve(f"{name}@{version}")


def owner(name: str) -> str | None:
    """The tenant a model name belongs to, or None if no version has it yet."""
    with session() as s:
        return s.scalar(select(ModelVersion.tenant).where(ModelVersion.name == name).limit(1))


def check_owner(s, name: str, tenant: str) -> None:
    other = s.scalar(select(ModelVersion.tenant).where(ModelVersion.name == name).limit(1))
    if other is not None and other != tenant:
        raise MFError(f"model name '{name}' belongs to another tenant; choose another order name")


def contract_metrics(metrics: dict) -> dict:
    """A version's metrics in the shape ARCHITECTURE.md promises (`mf models show --json`, the API): teacher,
    teacher_int8, and `student` = the deployed model; the other student as student_fp32 / student_int8."""
    deployed = metrics.get("deployed", "student_int8")
    out = {k: metrics[k] for k in ("teacher", "teacher_int8") if k in metrics}
    if deployed in metrics:
        out["student"] = metrics[deployed]
    for k in ("student", "student_int8"):
        if k != deployed and k in metrics:
            out["student_fp32" if k == "student" else k] = metrics[k]
    return out


def promote(name: str, version: int, alias: str) -> None:
    if alias.isdigit():
        raise MFError(f"alias '{alias}' cannot be a number (it would shadow a version)")
    with session() as s:
        exists = s.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
        if exists is None:
            raise NotFound(f"no model '{name}@{version}' (see `mf models ls`)")
        row = s.scalar(select(Alias).where(Alias.name == name, Alias.alias == alias))
        if row is None:
            s.add(Alias(name=name, alias=alias, version=version))
        else:
            row.version = version


def resolve(ref: str) -> ModelRef:
    """`name`, `name@<version>` or `name@<alias>`."""
    name, _, tag = ref.partition("@")
    with session() as s:
        aliases = _aliases(s, name)
        if not tag:
            prod = next((v for v, names in aliases.items() if "prod" in names), None)
            q = select(ModelVersion).where(ModelVersion.name == name)
            q = q.where(ModelVersion.version == prod) if prod else q.order_by(ModelVersion.version.desc()).limit(1)
        elif tag.isdigit():
            q = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == int(tag))
        else:
            version = next((v for v, names in aliases.items() if tag in names), None)
            if version is None:
                raise NotFound(f"model '{name}' has no alias '{tag}'")
            q = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        row = s.scalar(q)
        if row is None:
            raise NotFound(f"no model '{ref}' (see `mf models ls`)")
        return _ref(row, sorted(aliases.get(row.version, [])))


def by_order(order_ids: list[int]) -> dict[int, str]:
    """order id -> the `name@version` it registered, for the orders that registered one."""
    if not order_ids:
        return {}
    with session() as s:
        rows = s.execute(select(ModelVersion.order_id, ModelVersion.name, ModelVersion.version)
                         .where(ModelVersion.order_id.in_(order_ids)))
        return {oid: f"{name}@{version}" for oid, name, version in rows}


def list_models(name: str | None = None) -> list[ModelRef]:
    with session() as s:
        q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name:
            q = q.where(ModelVersion.name == name)
        rows = list(s.scalars(q))
        alias_cache: dict[str, dict[int, list[str]]] = {}
        out = []
        for r in rows:
            if r.name not in alias_cache:
                alias_cache[r.name] = _aliases(s, r.name)
            out.append(_ref(r, sorted(alias_cache[r.name].get(r.version, []))))
        return out
