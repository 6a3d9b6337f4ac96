import json

import pandas as pd
import pytest

from modelfactory.data.ingest import raise_on_errors, read_table
from modelfactory.errors import MFError

ROLES = {"text": "text", "label": "label"}


def test_csv_bad_rows_are_named_by_file_and_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b'text,label\ngood one,pos\n"",neg\nno label,\n"multi\nline",pos\nbad \xff byte,neg\nok,neg\n')
    t = read_table(f, ROLES)
    assert [r["text"] for r in t.rows] == ["good one", "multi\nline", "ok"]
    assert [str(e) for e in t.errors] == ["d.csv:3: empty text", "d.csv:4: missing label",
                                         "d.csv:7: bad encoding in text (not valid UTF-8)"]
    with pytest.raises(MFError, match=r"(?s)3 bad row\(s\).*d\.csv:3: empty text"):
        raise_on_errors(t, skip_bad_rows=False)
    raise_on_errors(t, skip_bad_rows=True)  # no exception


def test_csv_row_with_wrong_field_count(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\na,b,c\nfine,x\n")
    t = read_table(f, ROLES)
    assert str(t.errors[0]) == "d.csv:2: has 3 fields, header has 2"


def test_jsonl_invalid_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a", "label": "x"}) + "\n{oops\n" + json.dumps({"text": "", "label": "y"}) + "\n")
    t = read_table(f, ROLES)
    assert len(t.rows) == 1
    assert [str(e) for e in t.errors][0].startswith("d.jsonl:2: invalid JSON")
    assert str(t.errors[1]) == "d.jsonl:3: empty text"


def test_parquet_and_column_mapping(tmp_path):
    f = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["a", "b", None], "y": ["p", "n", "p"]}).to_parquet(f)
    t = read_table(f, {"text": "body", "label": "y"})
    assert t.rows == [{"text": "a", "label": "p"}, {"text": "b", "label": "n"}]
    assert str(t.errors[0]) == "d.parquet:3: missing text"


def test_missing_columns_are_listed(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("body,category\na,b\n")
    with pytest.raises(MFError, match=r"no column 'text' \(text\), 'label' \(label\); columns are: body, category"):
        read_table(f, ROLES)


@pytest.mark.parametrize("content,match", [(b"", "file is empty"), (b"text,label\n", "no data rows")])
def test_empty_files(tmp_path, content, match):
    f = tmp_path / "d.csv"
    f.write_bytes(content)
    with pytest.raises(MFError, match=match):
        read_table(f, ROLES)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(MFError, match="no such file"):
        read_table(tmp_path / "nope.csv", ROLES)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(MFError, match="unsupported file type"):
        read_table(tmp_path / "d.xlsx", ROLES)


def test_compressed_csv(tmp_path):
    import gzip

    f = tmp_path / "d.csv.gz"
    f.write_bytes(gzip.compress(b"text,label\nhello,x\n"))
    assert read_table(f, ROLES).rows == [{"text": "hello", "label": "x"}]
