"""Open Inference Protocol v2 (KServe / Triton REST) messages, and the binary tensor data extension.

A request is a JSON object, optionally followed by raw tensor bytes: the `Inference-Header-Content-Length` header
says how long the JSON part is, and each input whose `parameters.binary_data_size` is set takes that many bytes of
the rest, in input order (what `tritonclient.http` sends by default). BYTES tensors are JSON strings, or in binary
each element as a 4-byte little-endian length and its bytes. Outputs are JSON, or binary when the request asks
(`parameters.binary_data_output`, or an output's `parameters.binary_data`).

Everything here is pure: parse, check against a model's signature, encode. A problem with what the client sent is
a `ProtocolError` naming it, which the app answers as 400 (or the status it carries).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


class ProtocolError(Exception):
    """What the client sent is wrong; the message names the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- messages ----------------------------------------------------------------------------------------------
class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestInput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Message):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


# --- requests ----------------------------------------------------------------------------------------------
@dataclass
class Tensor:
    """One decoded input: numeric tensors as an ndarray of `shape`; BYTES as a flat list of str (JSON) or bytes
    (binary)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: Any

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


def _validation_message(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return f"request body is not valid JSON ({err['msg'].removeprefix('Invalid JSON: ')})"
    where = ".".join(str(p) for p in err["loc"]) or "request"
    more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
    return f"bad inference request: {where}: {err['msg']}{more}"


def parse_infer_request(body: bytes, header_length: str | None = None) -> tuple[InferenceRequest, list[Tensor]]:
    """The request and its inputs, decoded; JSON and binary data both checked against each input's shape."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    else:
        header, binary = body, memoryview(b"")
    if not header.strip():
        raise ProtocolError("empty request body: expected an inference request JSON object")
    try:
        req = InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        raise ProtocolError(_validation_message(e)) from None
    if not req.inputs:
        raise ProtocolError("the request has no inputs")
    tensors, offset = [], 0
    for inp in req.inputs:
        if any(d < 0 for d in inp.shape):
            raise ProtocolError(f"input '{inp.name}': shape {inp.shape} has a negative dimension")
        if inp.datatype not in DTYPES:
            raise ProtocolError(f"input '{inp.name}': unknown datatype '{inp.datatype}' "
                                f"(expected one of {', '.join(DTYPES)})")
        count = math.prod(inp.shape)
        size = (inp.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input '{inp.name}': binary_data_size {size} exceeds the {len(binary) - offset} "
                                    f"bytes of binary data left in the body")
            chunk = binary[offset:offset + size]
            offset += size
            value = _from_binary(inp, chunk, count)
        elif inp.data is None:
            raise ProtocolError(f"input '{inp.name}' has neither 'data' nor binary data")
        else:
            value = _from_json(inp, count)
        tensors.append(Tensor(inp.name, inp.datatype, tuple(inp.shape), value))
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ProtocolError(f"input names repeat: {names}")
    return req, tensors


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _from_json(inp: RequestInput, count: int) -> Any:
    flat = _flatten(inp.data)
    if len(flat) != count:
        raise ProtocolError(f"input '{inp.name}': shape {inp.shape} needs {count} elements, data has {len(flat)}")
    if inp.datatype == "BYTES":
        bad = next((x for x in flat if not isinstance(x, str)), None)
        if bad is not None:
            raise ProtocolError(f"input '{inp.name}': BYTES elements in JSON are strings, got {type(bad).__name__}")
        return flat
    try:
        if inp.datatype != "BOOL" and any(isinstance(x, bool) or not isinstance(x, int | float) for x in flat):
            raise TypeError
        arr = np.asarray(flat, dtype=DTYPES[inp.datatype])
    except (OverflowError, ValueError, TypeError):
        raise ProtocolError(f"input '{inp.name}': data is not all {inp.datatype} numbers in range") from None
    return arr.reshape(inp.shape)


def _from_binary(inp: RequestInput, chunk: memoryview, count: int) -> Any:
    if inp.datatype == "BYTES":
        items, pos, raw = [], 0, bytes(chunk)
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"input '{inp.name}': truncated BYTES element length at byte {pos}")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise ProtocolError(f"input '{inp.name}': BYTES element at byte {pos} claims {n} bytes, "
                                    f"{len(raw) - pos - 4} left")
            items.append(raw[pos + 4:pos + 4 + n])
            pos += 4 + n
        if len(items) != count:
            raise ProtocolError(f"input '{inp.name}': shape {inp.shape} needs {count} elements, binary data has "
                                f"{len(items)}")
        return items
    dtype = np.dtype(DTYPES[inp.datatype]).newbyteorder("<")
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(f"input '{inp.name}': shape {inp.shape} of {inp.datatype} is {count * dtype.itemsize} "
                            f"bytes, binary_data_size is {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype).reshape(inp.shape)


# --- checking inputs against a model's signature -------------------------------------------------------------
def rows_for(spec: dict[str, Any], tensor: Tensor, max_rows: int | None = None) -> list[Any]:
    """The raw inputs a `Predictor` takes (one per row) from a tensor sent for the signature input `spec`.

    `spec` is a signature input (`name`, `datatype`, `shape` with -1 for any size, optional `datatypes` listing
    the accepted ones). BYTES for an input whose own datatype is BYTES are strings (UTF-8); BYTES for an input
    whose own datatype is numeric are encoded files of that tensor's rows (binary, or base64 in JSON), one per row.
    """
    allowed = spec.get("datatypes") or [spec["datatype"]]
    if tensor.datatype not in allowed:
        raise ProtocolError(f"input '{tensor.name}': datatype {tensor.datatype} is not accepted "
                            f"(expected {' or '.join(allowed)})")
    want = list(spec["shape"]) if tensor.datatype == spec["datatype"] else [-1]
    got = list(tensor.shape)
    if len(got) != len(want) or any(w != -1 and w != g for w, g in zip(want, got)):
        raise ProtocolError(f"input '{tensor.name}': shape {got} does not match {want} for {tensor.datatype} "
                            f"(-1 is any size)")
    n = got[0]
    if n == 0:
        raise ProtocolError(f"input '{tensor.name}' has no rows (shape {got})")
    if max_rows is not None and n > max_rows:
        raise ProtocolError(f"input '{tensor.name}' has {n} rows, more than this model's max_batch_size {max_rows}; "
                            f"split the request")
    if tensor.datatype == "UINT8" and len(got) >= 3:  # pixels [N, H, W(, C)]: the ingest limit holds here too
        _check_pixels(tensor.name, None, math.prod(got[1:3]), f"{got[2]}x{got[1]}")
    if tensor.datatype != "BYTES":
        return list(tensor.value)
    if spec["datatype"] == "BYTES":
        try:
            return [x.decode("utf-8") if isinstance(x, bytes) else x for x in tensor.value]
        except UnicodeDecodeError as e:
            raise ProtocolError(f"input '{tensor.name}': element is not UTF-8 text ({e.reason})") from None
    out = []
    for i, x in enumerate(tensor.value):
        if isinstance(x, str):
            try:
                x = base64.b64decode(x, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(f"input '{tensor.name}' element {i}: encoded files in JSON must be base64 "
                                    f"strings (or send binary data)") from None
        _check_encoded(tensor.name, i, x)
        out.append(x)
    return out


def _check_pixels(name: str, i: int | None, pixels: int, size: str) -> None:
    from ..data.images import MAX_IMAGE_PIXELS

    if pixels > MAX_IMAGE_PIXELS:
        where = f"input '{name}'" + (f" element {i}" if i is not None else "")
        raise ProtocolError(f"{where}: an image of {size} pixels is larger than the limit of {MAX_IMAGE_PIXELS} "
                            f"pixels")


def _check_encoded(name: str, i: int, data: bytes) -> None:
    """An encoded image's size from its header alone, refused past the ingest limit before anything decodes it;
    what is not an image is left for the model to refuse with its own reason."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:
        _check_pixels(name, i, 1 << 62, f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0)}")
        return
    except Exception:  # noqa: BLE001 - not an image: the model's decoder gives the reason
        return
    _check_pixels(name, i, w * h, f"{w}x{h}")


def match_inputs(signature_inputs: Sequence[dict[str, Any]], tensors: Sequence[Tensor]) -> Tensor:
    """The one tensor the model takes, or a ProtocolError naming what is missing or unexpected."""
    want = [s["name"] for s in signature_inputs]
    got = [t.name for t in tensors]
    if sorted(got) != sorted(want):
        missing = [w for w in want if w not in got]
        extra = [g for g in got if g not in want]
        parts = ([f"missing input {', '.join(repr(m) for m in missing)}"] if missing else []) + \
                ([f"unexpected input {', '.join(repr(x) for x in extra)}"] if extra else [])
        raise ProtocolError(f"{'; '.join(parts)} (this model takes {', '.join(repr(w) for w in want)})")
    return tensors[0]


# --- responses ---------------------------------------------------------------------------------------------
def wants_binary(req: InferenceRequest, name: str) -> bool:
    for out in req.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((req.parameters or {}).get("binary_data_output", False))


def encode_response(model_name: str, model_version: str | None, request_id: str | None,
                    outputs: Sequence[tuple[str, str, np.ndarray | list[str]]],
                    binary: Sequence[bool]) -> tuple[bytes, int | None]:
    """(body, header length or None): the JSON response, followed by the binary outputs when any is binary."""
    entries, chunks = [], []
    for (name, datatype, value), as_binary in zip(outputs, binary):
        shape = [len(value)] if isinstance(value, list) else list(value.shape)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if as_binary:
            raw = (b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in value))
                   if datatype == "BYTES" else np.ascontiguousarray(value, dtype=np.dtype(DTYPES[datatype])
                                                                     .newbyteorder("<")).tobytes())
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = value if isinstance(value, list) else value.reshape(-1).tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        doc = {"model_name": model_name, "model_version": model_version, "id": request_id, "outputs": entries}
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
