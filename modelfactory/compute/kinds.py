"""Job kinds: what a pool job computes is not the pool's business. A package that wants its work run on the pool
registers a kind (a name -> a handler); the worker runs each attempt through the handler its job's kind names.

A handler runs one attempt in the job's process (or Ray task) and returns the job's result (a JSON-able dict). It
checkpoints as it goes and, once `ctx.should_stop()` turns true, checkpoints and raises `errors.StopRequested`;
`checkpoint_step(payload)` then says where the next attempt will resume. A package can also ask to be called after
every scheduling round of `mf server` (`after_round`), e.g. to close what its finished jobs add up to.

The pool never imports such a package: it imports the modules named by `MF_JOB_KINDS` (comma-separated; the
factory's by default) the first time it needs a kind, and those modules register on import. The `command` kind
(a tenant's command in the sandbox) is the pool's own and needs no registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..config import settings
from ..errors import MFError

COMMAND = "command"


@dataclass(frozen=True)
class JobContext:
    """What a handler knows about the attempt it runs."""

    job_id: int
    attempt: int
    tenant: str
    order_id: int | None
    payload: dict
    should_stop: Callable[[], bool]


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[JobContext], dict]
    checkpoint_step: Callable[[dict], int | None] = lambda payload: None


_kinds: dict[str, JobKind] = {}
_after_round: list[Callable[[], object]] = []
_loaded = False


def register(kind: JobKind) -> None:
    """Make `kind` runnable on the pool (the last registration of a name wins)."""
    if kind.name == COMMAND:
        raise MFError(f"job kind '{COMMAND}' is the pool's own")
    _kinds[kind.name] = kind


def after_round(fn: Callable[[], object]) -> None:
    """Call `fn()` after every scheduling round of `mf server`."""
    if fn not in _after_round:
        _after_round.append(fn)


def modules() -> list[str]:
    """The modules that register kinds: `MF_JOB_KINDS`, comma-separated."""
    return [m.strip() for m in settings().job_kinds.split(",") if m.strip()]


def load() -> None:
    """Import the kinds' modules (once per process); they register themselves."""
    global _loaded
    if not _loaded:
        for name in modules():
            importlib.import_module(name)
        _loaded = True


def get(name: str) -> JobKind:
    load()
    try:
        return _kinds[name]
    except KeyError:
        raise MFError(f"unknown job kind '{name}'; known: {', '.join(names())}") from None


def names() -> list[str]:
    load()
    return [*_kinds, COMMAND]


def run_after_round() -> None:
    load()
    for fn in _after_round:
        fn()
