"""Issue 17, item 9: uploads and table files cannot exhaust the process that reads them. Each test attacks one
guarantee: compressed tables (.gz, .bz2, Parquet) decompressed as a stream under MF_MAX_TABLE_MB; an over-long
field or line is a row error like any other; a header that is not UTF-8 is a clear error (also through
`mf order run`, which used to crash storing the message); many small zip members count toward the ratio test;
the API lists a bounded number of bad rows."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import resource
import zipfile

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from modelfactory.data import images, ingest
from modelfactory.data.ingest import read_table
from modelfactory.errors import MFError

from .conftest import run_mf, tiny_order

ROLES = {"text": "text", "label": "label"}
ADMIN = "mfk_test-admin-key"


def gz_bomb(path, megabytes: int, compress=gzip.open):
    """A CSV whose second row holds one field of `megabytes` MiB ('a' * n): a few hundred KB compressed."""
    chunk = b"a" * (1 << 20)
    with compress(path, "wb", compresslevel=1) as f:
        f.write(b"text,label\nfine,pos\n")
        for _ in range(megabytes):
            f.write(chunk)
        f.write(b",neg\nalso fine,neg\n")
    return path


def test_gz_bomb_is_refused_while_streaming_not_after_inflating(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_MAX_TABLE_MB", "32")
    f = gz_bomb(tmp_path / "bomb.csv.gz", 256)
    assert f.stat().st_size < 3 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MFError, match="MF_MAX_TABLE_MB"):
        read_table(f, ROLES)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 128 << 10  # KiB: never held 256 MiB


def test_bz2_bomb_is_refused_too(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_MAX_TABLE_MB", "8")
    with pytest.raises(MFError, match="MF_MAX_TABLE_MB"):
        read_table(gz_bomb(tmp_path / "bomb.csv.bz2", 16, compress=bz2.open), ROLES)


def test_cli_data_add_on_a_gz_bomb_is_one_clear_line(tmp_path):
    f = gz_bomb(tmp_path / "bomb.csv.gz", 96)
    r = run_mf("data", "add", "bomb", str(f), env={"MF_MAX_TABLE_MB": "16"}, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "MF_MAX_TABLE_MB" in r.stderr and "field larger than field limit" not in r.stderr
    assert "Traceback" not in r.stderr


def test_an_over_long_field_is_a_row_error_and_the_rest_is_read(tmp_path):
    long = "x" * 200_000
    f = tmp_path / "d.csv"
    f.write_text(f"text,label\nfirst,pos\n{long},neg\n\"{long}\",pos\nlast,neg\n")
    t = read_table(f, ROLES)
    assert [r["text"] for r in t.rows] == ["first", "last"]
    assert [str(e) for e in t.errors] == ["d.csv:3: a field is longer than 131072 characters",
                                         "d.csv:4: a field is longer than 131072 characters"]


def test_an_over_long_line_is_a_row_error_without_holding_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "MAX_LINE_CHARS", 1000)
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": "a", "label": "x"}), json.dumps({"text": "y" * 5000, "label": "x"}),
             json.dumps({"text": "b", "label": "y"}), "[" * 900 + "]" * 900]
    f.write_text("\n".join(lines) + "\n")
    t = read_table(f, ROLES)
    assert [r["text"] for r in t.rows] == ["a", "b"]
    assert str(t.errors[0]) == "d.jsonl:2: line 2 is longer than 1000 characters"
    assert str(t.errors[1]).startswith("d.jsonl:4: ")  # nested too deeply, or an array: a row error either way
    c = tmp_path / "d.csv"
    c.write_text("text,label\nok,x\n" + "z" * 3000 + ",x\nfine,y\n")
    t = read_table(c, ROLES)
    assert [r["text"] for r in t.rows] == ["ok", "fine"]
    assert [str(e) for e in t.errors] == ["d.csv:3: line 3 is longer than 1000 characters"]


def test_a_corrupt_gz_is_a_clear_error(tmp_path):
    f = tmp_path / "d.csv.gz"
    whole = gzip.compress(b"text,label\n" + b"".join(b"row %d,x\n" % i for i in range(20_000)))
    f.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MFError, match="cannot be decompressed"):
        read_table(f, ROLES)


def test_parquet_dictionary_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_MAX_TABLE_MB", "16")
    n = 200_000
    text = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["q" * 1024]))
    f = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": text, "label": pa.array(["x"] * n)}), f)
    assert f.stat().st_size < 1 << 20  # 200 MiB of text once decoded
    with pytest.raises(MFError, match="MF_MAX_TABLE_MB"):
        read_table(f, ROLES)
    ok = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"], "other": [1, 2]}), ok)
    assert [r["text"] for r in read_table(ok, ROLES).rows] == ["a", "b"]


def test_a_corrupt_parquet_is_a_clear_error(tmp_path):
    f = tmp_path / "d.parquet"
    f.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    with pytest.raises(MFError, match="not a readable Parquet file"):
        read_table(f, ROLES)


def test_header_that_is_not_utf8_is_a_clear_error(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b"t\xe9xt,label\nhello,pos\n")
    with pytest.raises(MFError, match="header is not valid UTF-8") as e:
        read_table(f, ROLES)
    str(e.value).encode("utf-8")  # no lone surrogates: printable and storable


def test_mf_order_run_with_a_non_utf8_header_fails_cleanly(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b"t\xe9xt,label\n" + b"hello,pos\nbye,neg\n" * 20)
    spec = tiny_order("badheader", f, tmp_path / "no-teacher")
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(spec))
    r = run_mf("order", "run", str(tmp_path / "order.yaml"), env={"HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "header is not valid UTF-8" in r.stderr


def test_many_small_zip_members_count_toward_the_ratio(tmp_path):
    f = tmp_path / "bomb.zip"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(64):
            zf.writestr(f"cats/{i}.png", b"\x00" * ((1 << 20) - 1))  # each just under the per-member test
    assert f.stat().st_size < 1 << 20
    with pytest.raises(MFError, match="zip bomb"):
        images.read_image_folder(f)


def test_a_real_small_archive_still_passes(tmp_path):
    from PIL import Image

    f = tmp_path / "ok.zip"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for label in ("a", "b"):
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buf, format="PNG")
                zf.writestr(f"{label}/{i}.png", buf.getvalue())
    assert len(images.read_image_folder(f).rows) == 6


@pytest.fixture
def api(mf_home, monkeypatch):
    from modelfactory.api import create_app

    from .test_serve_support import LiveServer

    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("MF_UPLOAD_MAX_MB", "2")
    server = LiveServer(app=create_app())
    yield server
    server.stop()


def test_api_lists_a_bounded_number_of_bad_rows(api):
    with httpx.Client(base_url=api.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        key = c.post("/tenants", json={"name": "acme"}).json()["api_key"]
    body = b"text,label\n" + b",x\n" * 5000 + b"good,y\n"
    with httpx.Client(base_url=api.url + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        r = c.post("/datasets", data={"name": "many"}, files={"file": ("many.csv", body, "text/csv")})
        assert r.status_code == 400, r.text
        d = r.json()
        assert len(d["rows"]) == 100 and d["rows_omitted"] == 4900 and "5000 bad row(s)" in d["error"]
        r = c.post("/datasets", data={"name": "hdr"}, files={"file": ("h.csv", b"t\xe9xt,label\na,b\n", "text/csv")})
        assert r.status_code == 400 and "not valid UTF-8" in r.json()["error"], r.text
        r = c.post("/orders", content=(b" " * 65536 for _ in range(128)),  # 8 MB, chunked: no Content-Length
                   headers={"content-type": "application/yaml"})
        assert r.status_code == 413 and "MF_UPLOAD_MAX_MB" in r.json()["error"], r.text
        assert c.get("/me").status_code == 200


@pytest.mark.parametrize("name,content", [("c.json", "[" * 100_000 + "]" * 100_000),
                                          ("c.csv", "mf_id,label\n1," + "x" * 200_000 + "\n")])
def test_label_corrections_that_would_crash_the_reader_are_one_error(tmp_path, name, content):
    from modelfactory.data.labelstudio import read_corrections

    f = tmp_path / name
    f.write_text(content)
    got, errors = read_corrections(f)
    assert got == [] and len(errors) == 1 and errors[0].startswith(name)
