"""A small client of the control plane's REST API (`mf server`), for the CLI's `--server URL` / `MF_SERVER`.

One method per route the CLI uses; each returns the API's JSON as it came (the CLI's remote backend validates it
into the same typed models the local backend returns, so `--json` is the same document either way). Every
failure is an MFError with one line a person can act on: the server's `{"error"}` message (a 422's `fields` and a
400's bad `rows` are named too), or why the server could not be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import MFError, NotFound

API = "/api/v1"
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
SLOW = httpx.Timeout(600.0, connect=10.0)  # an upload, or an order's ingest and planning on the server


def base_url(url: str) -> str:
    """'host:8080', 'http://host:8080/' or 'http://host:8080/api/v1' -> 'http://host:8080'."""
    url = url.strip().rstrip("/")
    if not url:
        raise MFError("--server: give the control plane's URL, e.g. http://127.0.0.1:8080")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise MFError(f"--server {url}: expected an http:// or https:// URL")
    return url.removesuffix(API)


def error_message(r: httpx.Response) -> str:
    """The server's one-line error; a 422's `fields` and a 400's bad `rows` are added (rows one per line, as
    `mf data add` prints them locally)."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        text = " ".join(r.text.split())[:200]
        return (f"{r.request.url} answered HTTP {r.status_code} ({text or 'no body'}): is this a modelfactory "
                "control plane (`mf server`)?")
    message = body["error"]
    fields = [f for f in body.get("fields") or [] if isinstance(f, dict)]
    unnamed = [f for f in fields if str(f.get('loc') or '(top level)') not in message]
    if unnamed:
        message += " (also: " + "; ".join(f"{f.get('loc') or '(top level)'}: {f.get('msg')}" for f in unnamed) + ")"
    rows = [row for row in body.get("rows") or [] if isinstance(row, dict)]
    if rows:
        message += "".join(f"\n{row.get('where')}: {row.get('message')}" for row in rows)
    return message


class ControlPlane:
    """The control plane at `url`, called with API key `key` (`Authorization: Bearer <key>`)."""

    def __init__(self, url: str, key: str | None, *, timeout: httpx.Timeout | float = TIMEOUT,
                 transport: httpx.BaseTransport | None = None):
        self.url = base_url(url)
        if not (key or "").strip():
            raise MFError(f"the control plane at {self.url} needs an API key: pass --api-key KEY or set MF_API_KEY")
        self.http = httpx.Client(base_url=self.url + API, headers={"Authorization": f"Bearer {key.strip()}"},
                                 timeout=timeout, transport=transport, follow_redirects=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def link(self, path: str) -> str:
        """The full URL of an API path, for messages (e.g. where to download a model's ONNX file)."""
        return f"{self.url}{API}{path}"

    # --- plumbing ------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, **kw) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self.http.request(method, path, params=params or None, **kw)
        except httpx.TimeoutException as e:
            raise MFError(f"the control plane at {self.url} did not answer in time ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise MFError(f"cannot reach the control plane at {self.url}: {e or type(e).__name__}") from None
        if r.is_success:
            return r
        message = error_message(r)
        if r.status_code == 401:
            message += " (the key comes from --api-key or MF_API_KEY)"
        if r.status_code == 404:
            raise NotFound(message)
        raise MFError(message, exit_code=1 if r.status_code >= 500 else None)

    def json(self, method: str, path: str, **kw) -> Any:
        r = self.request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise MFError(f"{r.request.url} answered HTTP {r.status_code} without JSON: is this a modelfactory "
                          "control plane (`mf server`)?") from None

    # --- tenants -------------------------------------------------------------------------------------------------
    def me(self) -> dict:
        """`GET /me`: {tenant, admin}."""
        return self.json("GET", "/me")

    def tenants(self) -> list[dict]:
        """`GET /tenants`: every tenant (admin key), or the key's own."""
        return self.json("GET", "/tenants")

    def add_tenant(self, name: str, *, weight: float = 1.0, cpu_hours_month: float | None = None,
                   gpu_hours_month: float | None = None, max_slots: int | None = None) -> dict:
        """`POST /tenants` (admin key): {tenant: {...}, api_key} (the key is shown this once)."""
        return self.json("POST", "/tenants", json={"name": name, "weight": weight, "cpu_hours_month": cpu_hours_month,
                                                   "gpu_hours_month": gpu_hours_month, "max_slots": max_slots})

    # --- datasets ------------------------------------------------------------------------------------------------
    def upload_dataset(self, name: str, path: Path, *, text: str = "text", label: str = "label",
                       image: str | None = None, skip_bad_rows: bool = False) -> dict:
        """`POST /datasets` (multipart, streamed from disk): {name, version, rows, skipped, stats}."""
        path = Path(path)
        if path.is_dir():
            raise MFError(f"{path}: a folder cannot be uploaded as it is; pack it first (a .zip or .tar.gz of "
                          f"class folders), e.g. `tar czf images.tar.gz -C {path} .`")
        if not path.is_file():
            raise MFError(f"{path}: no such file")
        form = {"name": name, "text": text, "label": label, "skip_bad_rows": "true" if skip_bad_rows else "false"}
        if image is not None:
            form["image"] = image
        with open(path, "rb") as f:
            return self.json("POST", "/datasets", data=form, timeout=SLOW,
                             files={"file": (path.name, f, "application/octet-stream")})

    def datasets(self, tenant: str | None = None) -> list[dict]:
        """`GET /datasets`: the latest version of each dataset the key may see."""
        return self.json("GET", "/datasets", params={"tenant": tenant})

    def dataset(self, name: str) -> dict:
        """`GET /datasets/{name}`: every version with its stats."""
        return self.json("GET", f"/datasets/{_seg(name)}")

    # --- orders --------------------------------------------------------------------------------------------------
    def submit_order(self, spec_text: str, *, content_type: str = "application/yaml",
                     priority: str = "standard") -> dict:
        """`POST /orders` with the spec as YAML (or JSON): {order, dataset, jobs, cached, shared}."""
        return self.json("POST", "/orders", content=spec_text.encode(), params={"priority": priority},
                         headers={"Content-Type": content_type}, timeout=SLOW)

    def order(self, order_id: int) -> dict:
        """`GET /orders/{id}`: the order with its nodes (the shapes of `factory.jobkinds.order_status`)."""
        return self.json("GET", f"/orders/{int(order_id)}")

    # --- jobs ----------------------------------------------------------------------------------------------------
    def jobs(self, *, tenant: str | None = None, state: str | None = None, order: int | None = None,
             limit: int | None = None) -> list[dict]:
        """`GET /jobs`: newest first."""
        return self.json("GET", "/jobs", params={"tenant": tenant, "state": state, "order": order, "limit": limit})

    def job(self, job_id: int) -> dict:
        """`GET /jobs/{id}`: the job with its `events`."""
        return self.json("GET", f"/jobs/{int(job_id)}")

    def cancel_job(self, job_id: int) -> dict:
        """`POST /jobs/{id}/cancel`: the job as it is now."""
        return self.json("POST", f"/jobs/{int(job_id)}/cancel")

    # --- models --------------------------------------------------------------------------------------------------
    def models(self, tenant: str | None = None) -> list[dict]:
        """`GET /models`: every version the key may see."""
        return self.json("GET", "/models", params={"tenant": tenant})

    def model(self, ref: str) -> dict:
        """`GET /models/{ref}` (name, name@3, name@alias): metrics, lineage, card, other versions."""
        return self.json("GET", f"/models/{_seg(ref)}")

    def promote(self, name: str, version: int, alias: str) -> dict:
        """`POST /models/{name}/aliases`: point `alias` at `name@version`."""
        return self.json("POST", f"/models/{_seg(name)}/aliases", json={"version": int(version), "alias": alias})

    # --- usage ---------------------------------------------------------------------------------------------------
    def usage(self, tenant: str | None = None, month: str | None = None) -> dict:
        """`GET /usage`: the invoice (`accounts.schemas.InvoiceOut`)."""
        return self.json("GET", "/usage", params={"tenant": tenant, "month": month})

    def usage_csv(self, tenant: str | None = None, month: str | None = None) -> str:
        """`GET /usage?format=csv`: the invoice as CSV text."""
        return self.request("GET", "/usage", params={"tenant": tenant, "month": month, "format": "csv"}).text


def _seg(value: str) -> str:
    """A path segment, escaped ('@' stays readable)."""
    return quote(value, safe="@")

