"""The models a server holds: registry versions loaded as predictors, each with its own batcher, kept in LRU order
under a count and a size limit.

Names are resolved at request time: `name` is the `prod` alias, else the latest version (registry.resolve), so
`mf models promote name@3 prod` moves traffic without a restart (resolutions are remembered `alias_ttl_s`; a
numbered version never changes, so it is remembered for good). A version is loaded on its first request
(`load_on_demand`, the default) or through the repository API; loading more than `max_loaded` models, or more
than `max_bytes` of model files, unloads the least recently used idle ones. Unloading drains the model's queue,
stops its thread and drops the predictor, which frees its onnxruntime session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry, tasks
from ..errors import MFError, NotFound
from ..registry import ModelRef
from .batcher import BatchConfig, Batcher, BatchStats
from .metering import Meter
from .metrics import ServeMetrics
from .protocol import ProtocolError

log = logging.getLogger("modelfactory.serve")

PLATFORM = "onnxruntime_onnx"
MIN_SUB_BATCH = 4  # rows: fewer per model call costs more in call overhead than padding saves
SUB_BATCH_SPREAD = 1.5  # longest / shortest string length in one sub-batch (+16 characters)


class ModelNotFound(Exception):
    """404: no such model (or, with auth, not the caller's)."""


class NotServedHere(ModelNotFound):
    """404: a registry model whose task family has no ONNX predictor (a generative adapter): the message says which
    server serves it. It is not in this server's repository index either."""


def unservable(ref: ModelRef) -> str | None:
    """Why this server cannot serve `ref`, or None when it can: only families that load an ONNX predictor
    (`TaskFamily.load_predictor`) are served over the Open Inference Protocol. Decided by the family's contract,
    never by its name."""
    try:
        family = tasks.get(ref.task)
    except MFError as e:  # a family that is not installed here (a plugin): nothing here can serve its models
        return f"model '{ref.name}@{ref.version}': {e}"
    if isinstance(family, tasks.TaskFamily):
        return None
    where = ("`mf serve-llm` serves it (OpenAI-compatible /v1/chat/completions)"
             if isinstance(family, tasks.GenerativeFamily) else "no Open Inference Protocol server serves it")
    return (f"model '{ref.name}@{ref.version}' is a {family.pipeline!r}-pipeline model (task '{ref.task}') that "
            f"`mf serve` does not serve: {where}")


class ModelNotReady(Exception):
    """400: the model exists but is not loaded, and this server does not load on demand."""


def split_name(name: str, version: str | None) -> tuple[str, str]:
    """(name, tag) from a URL's model name (which may carry `@version` or `@alias`) and its /versions/{v}."""
    base, at, tag = name.partition("@")
    if at and version:
        raise ProtocolError(f"model '{name}' names a version and the path names version '{version}': use one")
    if not base:
        raise ProtocolError("empty model name")
    return base, (version or tag or "")


@dataclass
class ServedModel:
    ref: ModelRef
    predictor: Any  # tasks.Predictor
    config: BatchConfig
    size_bytes: int
    batcher: Batcher | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, int]:
        return self.ref.name, self.ref.version

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        return self.predictor.signature

    def predict(self, rows: list[Any]) -> np.ndarray:
        """One batch through the model (on the batcher's thread). String rows are sequences whose cost grows with
        their length, and a batch is padded to its longest row: they run in sub-batches of similar lengths
        (shortest first, results put back in order), so one long row does not make every short one pay for it."""
        if len(rows) < 2 * MIN_SUB_BATCH or not all(isinstance(r, str) for r in rows):
            return self.predictor.predict_proba(rows, batch_size=max(1, len(rows)))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        chunks: list[list[int]] = [[]]
        for i in order:
            chunk = chunks[-1]
            if len(chunk) >= MIN_SUB_BATCH and len(rows[i]) > SUB_BATCH_SPREAD * len(rows[chunk[0]]) + 16:
                chunks.append(chunk := [])
            chunk.append(i)
        out = np.zeros((len(rows), len(self.predictor.labels)), dtype=np.float32)
        for chunk in chunks:
            out[chunk] = self.predictor.predict_proba([rows[i] for i in chunk], batch_size=len(chunk))
        return out

    def outputs(self, probs: np.ndarray) -> list[tuple[str, str, Any]]:
        """The signature's outputs from the model's probabilities: `label` (BYTES) and `probabilities` (FP32)."""
        out = []
        for spec in self.signature["outputs"]:
            if spec["name"] == "label":
                labels = self.predictor.labels
                out.append((spec["name"], spec["datatype"], [labels[i] for i in probs.argmax(axis=1)]))
            else:
                out.append((spec["name"], spec["datatype"], np.asarray(probs, dtype=np.float32)))
        return out

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        sig = self.signature
        return {"name": self.ref.name, "versions": versions, "platform": PLATFORM,
                "inputs": sig["inputs"], "outputs": sig["outputs"]}

    def triton_config(self) -> dict[str, Any]:
        """The model's configuration in Triton's terms (`GET /v2/models/{name}/config`)."""
        sig, c = self.signature, self.config

        def dims(t):  # Triton's config leaves the batch dimension out
            return {"name": t["name"], "data_type": "TYPE_" + ("STRING" if t["datatype"] == "BYTES"
                                                               else t["datatype"]), "dims": t["shape"][1:] or [1]}

        cfg: dict[str, Any] = {"name": self.ref.name, "platform": PLATFORM, "backend": "onnxruntime",
                               "version_policy": {"specific": {"versions": [self.ref.version]}},
                               "max_batch_size": c.max_batch_size, "input": [dims(t) for t in sig["inputs"]],
                               "output": [dims(t) for t in sig["outputs"]]}
        if c.enabled:
            cfg["dynamic_batching"] = {"max_queue_delay_microseconds": c.max_queue_delay_microseconds,
                                       "preferred_batch_size": list(c.preferred_batch_size),
                                       "default_queue_policy": {"max_queue_size": c.max_queue_size}}
        return cfg


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name != "manifest.json")


class ModelRepository:
    def __init__(self, batch: BatchConfig | None = None, *, max_loaded: int | None = None,
                 max_bytes: int | None = None, threads: int | None = None, alias_ttl_s: float = 1.0,
                 load_on_demand: bool = True, metrics: ServeMetrics | None = None, meter: Meter | None = None):
        if max_loaded is not None and max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1 (got {max_loaded})")
        self.batch = batch or BatchConfig()
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self.threads = threads
        self.alias_ttl_s = alias_ttl_s
        self.load_on_demand = load_on_demand
        self.metrics = metrics or ServeMetrics()
        self.meter = meter
        self._models: OrderedDict[tuple[str, int], ServedModel] = OrderedDict()  # least recently used first
        self._loading: dict[tuple[str, int], asyncio.Future] = {}
        self._refs: dict[tuple[str, str], tuple[ModelRef, float]] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._servable: dict[str, bool] = {}  # task -> its family loads an ONNX predictor

    # --- names ------------------------------------------------------------------------------------------
    async def resolve(self, name: str, tag: str = "", tenant: str | None = None) -> ModelRef:
        """The registry version `name[@tag]` means now; ModelNotFound if none, or if it is not `tenant`'s."""
        hit = self._refs.get((name, tag))
        now = time.monotonic()
        if hit is None or hit[1] < now:
            try:
                ref = await asyncio.to_thread(registry.resolve, f"{name}@{tag}" if tag else name)
            except NotFound as e:
                self._refs.pop((name, tag), None)
                raise ModelNotFound(str(e)) from None
            self._refs[(name, tag)] = (ref, float("inf") if tag.isdigit() else now + self.alias_ttl_s)
        else:
            ref = hit[0]
        if tenant is not None and ref.tenant != tenant:
            raise ModelNotFound(f"no model '{name}{'@' + tag if tag else ''}' (see `mf models ls`)")
        why = self._unservable(ref)
        if why:
            raise NotServedHere(why)
        return ref

    def _unservable(self, ref: ModelRef) -> str | None:
        if ref.task not in self._servable:  # one look at the family per task, not per request
            self._servable[ref.task] = unservable(ref) is None
        return None if self._servable[ref.task] else unservable(ref)

    async def versions(self, name: str, tenant: str | None = None) -> list[str]:
        refs = await asyncio.to_thread(registry.list_models, name)
        return [str(r.version) for r in refs if tenant is None or r.tenant == tenant]

    # --- loaded models ----------------------------------------------------------------------------------
    def loaded(self) -> list[ServedModel]:
        return list(self._models.values())

    def get_loaded(self, ref: ModelRef) -> ServedModel | None:
        return self._models.get((ref.name, ref.version))

    async def get(self, ref: ModelRef) -> ServedModel:
        """The loaded model for `ref` (most recently used now), loading it when the server loads on demand."""
        model = self._models.get((ref.name, ref.version))
        if model is not None:
            self._models.move_to_end(model.key)
            return model
        if not self.load_on_demand:
            raise ModelNotReady(f"model '{ref}' is not loaded (load it: POST /v2/repository/models/{ref.name}/load)")
        return await self.load(ref)

    async def load(self, ref: ModelRef, config: BatchConfig | None = None) -> ServedModel:
        key = (ref.name, ref.version)
        if config is not None and key in self._models and self._models[key].config != config:
            await self._unload_key(key, "reconfigure")
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            try:
                model = await self._load(ref, config or self.batch)
            except BaseException as e:
                self._loading.pop(key, None)
                pending.set_exception(e)
                pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
                raise
            self._loading.pop(key, None)
            pending.set_result(model)
            await self._evict(keep=key)
            return model
        return await asyncio.shield(pending)

    async def _load(self, ref: ModelRef, config: BatchConfig) -> ServedModel:
        started = time.perf_counter()
        try:
            family = tasks.get(ref.task)
            predictor = await asyncio.to_thread(family.load_predictor, ref.path, self.threads)
            sig = predictor.signature
            if len(sig["inputs"]) != 1:
                raise RuntimeError(f"model '{ref}' declares {len(sig['inputs'])} inputs; the server serves "
                                   f"models with one input")
        except Exception as e:
            self._failed[(ref.name, ref.version)] = str(e)
            raise
        self._failed.pop((ref.name, ref.version), None)
        model = ServedModel(ref, predictor, config, _dir_bytes(ref.path))
        labels = (ref.name, str(ref.version))
        m = self.metrics

        def on_batch(stats: BatchStats) -> None:
            m.batch_size.labels(*labels).observe(stats.rows)
            m.batches.labels(*labels).inc()
            m.compute.labels(*labels).inc(stats.seconds)

        model.batcher = Batcher(str(ref), model.predict, config, on_batch=on_batch,
                                on_depth=m.queue_depth.labels(*labels).set)
        self._models[model.key] = model
        m.loads.inc()
        self._gauges()
        log.info("loaded %s (%s, %.1f MB) in %.2f s", ref, ref.task, model.size_bytes / 1e6,
                 time.perf_counter() - started)
        return model

    def _over(self) -> bool:
        if self.max_loaded is not None and len(self._models) > self.max_loaded:
            return True
        return self.max_bytes is not None and sum(m.size_bytes for m in self._models.values()) > self.max_bytes

    async def _evict(self, keep: tuple[str, int]) -> None:
        while self._over():
            victim = next((k for k, m in self._models.items() if k != keep and not m.batcher.busy), None)
            if victim is None:
                log.warning("over the loaded-model limit, but every other model is busy; evicting later")
                return
            await self._unload_key(victim, "lru")

    async def unload(self, name: str, tenant: str | None = None) -> list[ServedModel]:
        """Unload every loaded version of `name` (only `tenant`'s, with auth); ModelNotFound if none exists."""
        keys = [k for k, m in self._models.items() if k[0] == name and (tenant is None or m.ref.tenant == tenant)]
        if not keys:
            await self.resolve(name, "", tenant)  # a model that exists but is not loaded: nothing to do
        gone = []
        for key in keys:
            gone.append(await self._unload_key(key, "api"))
        return [g for g in gone if g is not None]

    async def unload_version(self, ref: ModelRef) -> ServedModel | None:
        return await self._unload_key((ref.name, ref.version), "api")

    async def _unload_key(self, key: tuple[str, int], reason: str) -> ServedModel | None:
        model = self._models.pop(key, None)
        if model is None:
            return None
        await model.batcher.close()
        model.predictor = None  # the session goes with the last reference
        self.metrics.queue_depth.labels(key[0], str(key[1])).set(0)
        self.metrics.unloads.labels(reason).inc()
        self._gauges()
        log.info("unloaded %s@%s (%s)", key[0], key[1], reason)
        return model

    def _gauges(self) -> None:
        self.metrics.loaded.set(len(self._models))
        self.metrics.loaded_bytes.set(sum(m.size_bytes for m in self._models.values()))

    async def close(self) -> None:
        for key in list(self._models):
            await self._unload_key(key, "shutdown")

    # --- the repository index ---------------------------------------------------------------------------
    async def index(self, tenant: str | None = None, ready_only: bool = False) -> list[dict[str, str]]:
        """Every registry version (the caller's, with auth): READY when loaded, else UNAVAILABLE with why."""
        refs = await asyncio.to_thread(registry.list_models)
        out = []
        for r in refs:
            if tenant is not None and r.tenant != tenant:
                continue
            if self._unservable(r):  # a generative adapter: `mf serve-llm` lists it, not this server
                continue
            key = (r.name, r.version)
            if key in self._models:
                state, reason = "READY", ""
            elif key in self._loading:
                state, reason = "LOADING", ""
            else:
                state, reason = "UNAVAILABLE", self._failed.get(key, "unloaded")
            if ready_only and state != "READY":
                continue
            out.append({"name": r.name, "version": str(r.version), "state": state, "reason": reason})
        return out

    def threads_used(self) -> int:
        return self.threads or os.cpu_count() or 1
