"""The LoRA adapters a generation server may serve: registry versions of a generative family (`mf_model.json`
kind `lora-adapter`) trained on the base this server holds, hot-loaded into the engine's one `PeftModel` on first use
and evicted least-recently-used beyond `max_adapters`.

Names resolve like everywhere else (`name` = its `prod` alias, else its latest version; `name@3`, `name@alias`),
remembered `alias_ttl_s` so a promote moves traffic without a restart. With a tenant (auth on), another tenant's
adapter answers exactly like one that does not exist. An adapter in use by a request (waiting or running) is
pinned: it is never evicted under it; the pool may then hold more than `max_adapters` for a while, and shrinks
back when those requests end. Loads and evictions are serialised (one at a time) and run off the event loop
under the engine's lock, between two generation steps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ... import registry, tasks
from ...errors import MFError, NotFound
from ...registry import ModelRef
from ...tasks.lm_common import ADAPTER_KIND, ADAPTER_META
from ...tasks.pretrained import resolve as resolve_pretrained
from .engine import Engine

log = logging.getLogger("modelfactory.serve.llm")


class UnknownModel(Exception):
    """404: no such model (or another tenant's)."""


class IncompatibleModel(Exception):
    """400: a registry model this server cannot serve (not a LoRA adapter, or trained on another base)."""


class AdapterLoadError(Exception):
    """The adapter's files could not be loaded (a broken artifact: the server's problem, not the request's)."""


def base_identity(base: str) -> str:
    """What two names of a base must share to be the same model: the real path of a local dir, else the hub id."""
    resolved = resolve_pretrained(base)
    return str(Path(resolved).resolve()) if Path(resolved).is_dir() else resolved


def _config_of(name: str) -> dict | None:
    """config.json of a local dir or of a hub id in the local hub cache (never downloads)."""
    try:
        resolved = resolve_pretrained(name)
        if Path(resolved).is_dir():
            return json.loads((Path(resolved) / "config.json").read_text())
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config.json")
        return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None
    except (OSError, ValueError, MFError):
        return None


def same_base(trained_on: str, served: str) -> bool:
    """Whether an adapter trained on `trained_on` fits the base `served` (both as orders name them): the same
    local dir (real paths), the same hub id, or a hub id and a dir with the same config.json."""
    try:
        a, b = base_identity(trained_on), base_identity(served)
    except MFError:
        return False
    if a == b:
        return True
    if Path(a).is_dir() and Path(b).is_dir():
        return False
    ca, cb = _config_of(trained_on), _config_of(served)
    drop = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")
    return ca is not None and cb is not None and \
        {k: v for k, v in ca.items() if k not in drop} == {k: v for k, v in cb.items() if k not in drop}


def generative(task: str) -> bool:
    """Whether registry versions of `task` come from a generative family: decided by the family's contract, never
    by its name (a family not installed here is not)."""
    try:
        return isinstance(tasks.get(task), tasks.GenerativeFamily)
    except MFError:
        return False


def adapter_meta(ref: ModelRef) -> dict | None:
    """The version's mf_model.json when it is a LoRA adapter of a generative family, else None."""
    if not generative(ref.task):
        return None
    try:
        meta = json.loads((ref.path / ADAPTER_META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == ADAPTER_KIND else None


def check_adapter(name: str, base: str) -> ModelRef:
    """The registry version `name` means, when it is a LoRA adapter trained on `base`; MFError otherwise (for
    the CLI, before a server starts)."""
    ref = registry.resolve(name)
    meta = adapter_meta(ref)
    if meta is None:
        raise MFError(f"model '{ref}' is a {ref.task} model, not a LoRA adapter for text generation")
    if not same_base(str(meta.get("base_model", "")), base):
        raise MFError(f"adapter '{ref}' was trained on base '{meta.get('base_model')}', not on '{base}'")
    return ref


def peft_name(ref: ModelRef) -> str:
    """The adapter's name inside the PeftModel (a module-dict key: no dots), unique per (tenant, name, version):
    a readable part, then a hash of all three, so names that read alike (`acme.bot` and `acme_bot`) never share
    one adapter slot."""
    digest = hashlib.sha256(f"{ref.tenant}\0{ref.name}\0{ref.version}".encode()).hexdigest()[:16]
    return f"{ref.name}__v{ref.version}".replace(".", "_").replace("-", "_") + f"__{digest}"


class AdapterPool:
    def __init__(self, engine: Engine, base: str, *, max_adapters: int = 8, alias_ttl_s: float = 1.0,
                 on_change: Callable[[int, str], None] | None = None):
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be >= 1 (got {max_adapters})")
        self.engine = engine
        self.base = base
        self.max_adapters = max_adapters
        self.alias_ttl_s = alias_ttl_s
        self.on_change = on_change  # (adapters loaded now, "load" | "evict")
        self._loaded: OrderedDict[str, ModelRef] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}
        self._change = asyncio.Lock()
        self._refs: dict[str, tuple[ModelRef, float]] = {}
        self._fits: dict[str, tuple[dict | None, bool]] = {}  # artifact id -> (meta, fits this base)

    # --- names ------------------------------------------------------------------------------------------
    def _fit(self, ref: ModelRef) -> tuple[dict | None, bool]:
        hit = self._fits.get(ref.artifact_id)
        if hit is None:
            meta = adapter_meta(ref)
            hit = (meta, meta is not None and same_base(str(meta.get("base_model", "")), self.base))
            self._fits[ref.artifact_id] = hit
        return hit

    async def resolve(self, name: str, tenant: str | None) -> ModelRef:
        """The adapter version `name` (`name@3`, `name@alias`) means now; UnknownModel when it does not exist or
        is another tenant's, IncompatibleModel when it is not a LoRA adapter of this server's base."""
        base, _, tag = name.partition("@")
        if not base:
            raise UnknownModel(f"The model '{name}' does not exist")
        hit = self._refs.get(name)
        now = time.monotonic()
        if hit is None or hit[1] < now:
            try:
                ref = await asyncio.to_thread(registry.resolve, name)
            except NotFound:
                self._refs.pop(name, None)
                raise UnknownModel(f"The model '{name}' does not exist") from None
            self._refs[name] = (ref, float("inf") if tag.isdigit() else now + self.alias_ttl_s)
        else:
            ref = hit[0]
        if tenant is not None and ref.tenant != tenant:
            raise UnknownModel(f"The model '{name}' does not exist")
        meta, fits = await asyncio.to_thread(self._fit, ref)
        if meta is None:
            raise IncompatibleModel(f"model '{ref}' is a {ref.task} model, not a LoRA adapter for text generation")
        if not fits:
            raise IncompatibleModel(f"adapter '{ref}' was trained on base '{meta.get('base_model')}', but this "
                                    f"server serves base '{self.base}'")
        return ref

    async def visible(self, tenant: str | None) -> list[ModelRef]:
        """The adapters `tenant` may call (all of them without auth): each name once, as it resolves now."""
        refs = await asyncio.to_thread(registry.list_models)
        names = sorted({r.name for r in refs if generative(r.task) and (tenant is None or r.tenant == tenant)})
        out = []
        for name in names:
            try:
                out.append(await self.resolve(name, tenant))
            except (UnknownModel, IncompatibleModel):
                continue
        return out

    # --- loading ----------------------------------------------------------------------------------------
    @property
    def loaded(self) -> list[str]:
        """`name@version` of the loaded adapters, least recently used first."""
        return [str(ref) for ref in self._loaded.values()]

    async def acquire(self, ref: ModelRef) -> str:
        """The adapter's name in the engine, loaded and pinned until `release`."""
        key = peft_name(ref)
        while True:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                self._pins[key] = self._pins.get(key, 0) + 1
                return key
            async with self._change:
                if key in self._loaded:
                    continue
                try:
                    await asyncio.to_thread(self._locked, self.engine.host.load, key, str(ref.path))
                except Exception as e:
                    log.exception("cannot load adapter %s", ref)
                    raise AdapterLoadError(f"cannot load adapter '{ref}': {type(e).__name__}: {e}") from None
                self._loaded[key] = ref
                self._pins[key] = self._pins.get(key, 0) + 1
                log.info("loaded adapter %s", ref)
                if self.on_change:
                    self.on_change(len(self._loaded), "load")
                await self._evict()
                return key

    def release(self, key: str) -> None:
        self._pins[key] = max(0, self._pins.get(key, 0) - 1)
        if len(self._loaded) > self.max_adapters:
            asyncio.get_running_loop().create_task(self._evict_later())

    async def _evict_later(self) -> None:
        async with self._change:
            await self._evict()

    async def _evict(self) -> None:
        """Unload least recently used, unpinned adapters beyond max_adapters (the caller holds `_change`)."""
        while len(self._loaded) > self.max_adapters:
            victim = next((k for k in self._loaded if not self._pins.get(k)), None)
            if victim is None:
                return
            ref = self._loaded.pop(victim)
            self._pins.pop(victim, None)
            await asyncio.to_thread(self._locked, self.engine.host.delete, victim)
            log.info("evicted adapter %s (least recently used)", ref)
            if self.on_change:
                self.on_change(len(self._loaded), "evict")

    def _locked(self, fn: Callable[..., None], *args: str) -> None:
        with self.engine.lock:
            fn(*args)
