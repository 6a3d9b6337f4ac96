"""The task families this server knows (discovered, plugins included), so clients and the dashboard's order form
offer what exists instead of a hard-coded list."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from ... import tasks
from ...accounts.tenants import Principal
from ..auth import principal

router = APIRouter(tags=["tasks"])


class TaskFamilyInfo(BaseModel):
    name: str
    roles: list[str]  # the data columns an order's dataset must provide, by role
    pipeline: str  # "compress" (teacher -> small student) or "adapt" (an adapter on a shared base)


@router.get("/tasks", response_model=list[TaskFamilyInfo])
def task_families(p: Principal = Depends(principal)) -> list[TaskFamilyInfo]:
    """Every task family an order's `task` may name."""
    return [TaskFamilyInfo(name=n, roles=list(tasks.get(n).roles), pipeline=tasks.get(n).pipeline)
            for n in tasks.names()]
