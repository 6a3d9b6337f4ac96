"""Image datasets: class folders, archives read in memory (and refused when unsafe), tables of image paths,
the built-in image corpora, and `mf data add` on a folder."""

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelfactory.artifacts import content_hash
from modelfactory.data import builtin, versions
from modelfactory.data.images import check_image, read_image_folder, resolve_image_paths
from modelfactory.data.ingest import raise_on_errors, read_table
from modelfactory.errors import MFError

from .conftest import run_mf

IMAGE_ROLES = {"image": "image", "label": "label"}


def encoded(seed: int, fmt: str = "PNG", size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def clean_folder(tmp_path) -> Path:
    """Two classes, three good images each (PNG and JPEG), one of them in a nested sub-folder."""
    root = tmp_path / "pets"
    for i in range(3):
        write(root / "cats" / f"c{i}.png", encoded(i))
        write(root / "dogs" / f"d{i}.jpg", encoded(10 + i, "JPEG"))
    write(root / "dogs" / "puppies" / "p.png", encoded(20))
    return root


@pytest.fixture
def messy_folder(clean_folder) -> Path:
    write(clean_folder / "cats" / "broken.png", np.random.default_rng(0).bytes(300))  # random bytes
    jpeg = encoded(30, "JPEG", size=64)
    write(clean_folder / "dogs" / "half.jpg", jpeg[: len(jpeg) // 2])  # a valid JPEG cut in half
    write(clean_folder / "dogs" / "notes.txt", b"not an image\n")
    write(clean_folder / "stray.png", encoded(40))  # no class folder
    return clean_folder


def zip_of(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return out


def tar_with(out: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


# --- check_image --------------------------------------------------------------------------------------------
def test_check_image_reasons():
    good = encoded(1)
    assert check_image(good) is None
    assert check_image(b"hello") == "not an image (cannot identify image file)"
    jpeg = encoded(2, "JPEG", size=64)
    assert check_image(jpeg[: len(jpeg) // 2]) == "truncated image"
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG")  # 81 Mpx: a decompression bomb by our limit
    assert check_image(buf.getvalue()).startswith("image too large (81000000 pixels, limit ")


# --- folders ------------------------------------------------------------------------------------------------
def test_folder_bad_files_are_listed_by_path(messy_folder):
    t = read_image_folder(messy_folder)
    assert [str(e) for e in t.errors] == [
        "cats/broken.png: not an image (cannot identify image file)",
        "dogs/half.jpg: truncated image",
        "dogs/notes.txt: not an image (cannot identify image file)",
        "stray.png: not inside a class folder",
    ]
    with pytest.raises(MFError, match=r"(?s)4 bad row\(s\).*cats/broken\.png: not an image.*dogs/half\.jpg: trunc"):
        raise_on_errors(t, skip_bad_rows=False)
    with pytest.raises(MFError, match="dogs/notes.txt: not an image"):
        versions.add_file("pets", messy_folder, IMAGE_ROLES)


def test_folder_skip_bad_rows_keeps_good_rows_with_labels(messy_folder):
    ref = versions.add_file("pets", messy_folder, IMAGE_ROLES, skip_bad_rows=True)
    assert (ref.n_rows, ref.skipped) == (7, 4)
    assert ref.stats["labels"] == {"cats": 3, "dogs": 4}  # dogs/puppies/p.png belongs to dogs
    assert ref.stats["image_size"] == "16x16" and ref.stats["image_modes"] == {"RGB": 7}
    df = versions.load_rows(ref.artifact_id)
    assert df.iloc[0]["image"] == (messy_folder / "cats" / "c0.png").read_bytes()  # original bytes, round-tripped
    assert list(df["label"]) == ["cats"] * 3 + ["dogs"] * 4


def test_wrapper_folder_is_descended_and_errors(tmp_path, clean_folder):
    assert read_image_folder(clean_folder).rows == read_image_folder(clean_folder.parent).rows  # tmp/pets/...
    with pytest.raises(MFError, match="no such file or folder"):
        read_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(MFError, match="no files in it"):
        read_image_folder(tmp_path / "empty")
    write(tmp_path / "d.rar", b"Rar!")
    with pytest.raises(MFError, match=r"unsupported archive type '\.rar'"):
        read_image_folder(tmp_path / "d.rar")
    with pytest.raises(MFError, match="roles image and label"):
        versions.add_file("x", clean_folder, {"text": "text", "label": "label"})


def test_links_out_of_folder_and_fifos_are_bad_rows(tmp_path, clean_folder):
    secret = write(tmp_path / "secret.png", encoded(99))
    (clean_folder / "cats" / "link.png").symlink_to(secret)
    (clean_folder / "cats" / "inside.png").symlink_to(clean_folder / "cats" / "c0.png")  # stays inside: fine
    (clean_folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(clean_folder / "dogs" / "pipe.png")  # must be reported, never opened (that would block)
    t = read_image_folder(clean_folder)
    assert [str(e) for e in t.errors] == ["cats/link.png: outside the dataset folder (symbolic link)",
                                         "dogs/pipe.png: not a regular file",
                                         "linked: symbolic link to a folder (not followed)"]
    assert len(t.rows) == 8


# --- archives -----------------------------------------------------------------------------------------------
def test_zip_and_tar_give_the_folders_dataset_id(tmp_path, clean_folder):
    folder_ref = versions.add_file("pets", clean_folder, IMAGE_ROLES)
    zipped = zip_of(clean_folder, tmp_path / "pets.zip")
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tf:
        tf.add(clean_folder, arcname="pets")  # wrapped in a top folder, with directory entries
    for archive in (zipped, tmp_path / "pets.tar.gz"):
        ref = versions.add_file("pets", archive, IMAGE_ROLES)
        assert (ref.artifact_id, ref.version, ref.n_rows) == (folder_ref.artifact_id, 1, 7)


@pytest.mark.parametrize("entry", ["../evil.png", "cats/../../evil.png"])
def test_tar_with_dotdot_entry_is_refused(tmp_path, entry):
    archive = tar_with(tmp_path / "x.tar.gz", {"cats/ok.png": encoded(1), entry: encoded(2)})
    with pytest.raises(MFError, match=rf"x\.tar\.gz: refused: entry '{re.escape(entry)}' has '\.\.' in its path"):
        read_image_folder(archive)


def test_zip_with_absolute_or_drive_entry_is_refused(tmp_path):
    for name, why in [("/abs.png", "has an absolute path"), ("C:/win.png", "has a drive letter")]:
        archive = tmp_path / "x.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("cats/ok.png", encoded(1))
            zf.writestr(zipfile.ZipInfo(name), encoded(2))  # ZipInfo keeps the name as given
        with pytest.raises(MFError, match=f"x.zip: refused: entry '{name}' {why}"):
            read_image_folder(archive)


def test_links_in_archives_are_refused(tmp_path):
    archive = tmp_path / "x.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("cats/ok.png")
        info.size = len(data := encoded(1))
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cats/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(MFError, match=r"x\.tar: refused: entry 'cats/passwd\.png' is a symbolic link"):
        read_image_folder(archive)
    zipped = tmp_path / "x.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        info = zipfile.ZipInfo("cats/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(MFError, match=r"x\.zip: refused: entry 'cats/link\.png' is a symbolic link"):
        read_image_folder(zipped)


def test_zip_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cats/ok.png", encoded(1))
        zf.writestr("cats/zeros.png", bytes(50 << 20))  # 50 MiB of zeros -> ~50 KiB
    with pytest.raises(MFError, match=r"bomb\.zip: refused: it would expand to more than 10\.0 MiB \(limit\) — a zip"):
        read_image_folder(bomb, max_total_bytes=10 << 20)
    with pytest.raises(MFError, match=r"bomb\.zip: refused: entry 'cats/zeros\.png' would expand \d+x .*limit 100x"):
        read_image_folder(bomb)  # under the default size limit, but the ratio gives it away
    tgz = tar_with(tmp_path / "bomb.tar.gz", {"cats/zeros.png": bytes(50 << 20)})
    with pytest.raises(MFError, match=r"bomb\.tar\.gz: refused: it would expand \d+x"):
        read_image_folder(tgz)


def test_nested_archive_is_just_a_bad_row(tmp_path, clean_folder):
    inner = zip_of(clean_folder, tmp_path / "inner.zip")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("cats/a.png", encoded(1))
        zf.write(inner, "cats/inner.zip")
    t = read_image_folder(outer)
    assert len(t.rows) == 1
    assert [str(e) for e in t.errors] == ["cats/inner.zip: not an image (cannot identify image file)"]


# --- tables of image paths ----------------------------------------------------------------------------------
def test_csv_image_paths(tmp_path):
    data = tmp_path / "data"
    write(data / "img" / "a.png", encoded(1))
    write(data / "img" / "b.jpg", encoded(2, "JPEG"))
    write(tmp_path / "outside.png", encoded(3))
    write(data / "img" / "bad.png", b"garbage")
    f = data / "file.csv"
    f.write_text("path,y\nimg/a.png,cat\nimg/missing.png,cat\n../outside.png,dog\n/etc/hostname,dog\n"
                 "img/bad.png,dog\nimg/b.jpg,dog\n")
    t = resolve_image_paths(read_table(f, {"image": "path", "label": "y"}), data)
    assert [r["label"] for r in t.rows] == ["cat", "dog"] and t.lines == [2, 7]
    assert t.rows[0]["image"] == (data / "img" / "a.png").read_bytes()
    assert [str(e) for e in t.errors] == [
        "file.csv:3: img/missing.png: no such file",
        "file.csv:4: ../outside.png: outside the dataset folder",
        "file.csv:5: /etc/hostname: absolute path not allowed (give it relative to the table's folder)",
        "file.csv:6: img/bad.png: not an image (cannot identify image file)",
    ]
    with pytest.raises(MFError, match=r"(?s)4 bad row.*file\.csv:4: \.\./outside\.png: outside the dataset folder"):
        versions.add_file("pics", f, {"image": "path", "label": "y"})
    ref = versions.add_file("pics", f, {"image": "path", "label": "y"}, skip_bad_rows=True)
    assert (ref.n_rows, ref.skipped, ref.stats["labels"]) == (2, 4, {"cat": 1, "dog": 1})


def test_parquet_with_encoded_image_bytes(tmp_path):
    import pandas as pd

    f = tmp_path / "d.parquet"
    pd.DataFrame({"img": [encoded(1), b"junk", encoded(2)], "label": ["a", "b", "c"]}).to_parquet(f)
    ref = versions.add_file("embedded", f, {"image": "img", "label": "label"}, skip_bad_rows=True)
    assert (ref.n_rows, ref.stats["labels"]) == (2, {"a": 1, "c": 1})
    t = resolve_image_paths(read_table(f, {"image": "img", "label": "label"}), tmp_path)
    assert [str(e) for e in t.errors] == ["d.parquet:2: not an image (cannot identify image file)"]


# --- built-in image corpora ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,rows,side", [("digits", 1797, 8), ("mnist-5k", 5000, 28)])
def test_builtin_image_corpora(name, rows, side):
    corpus = builtin.corpus(name)
    assert corpus.task == "image-classification"
    t = corpus.table()
    assert len(t.rows) == rows and not t.errors
    assert sorted({r["label"] for r in t.rows}) == [str(d) for d in range(10)]
    for r in t.rows[:: rows // 7]:
        with Image.open(io.BytesIO(r["image"])) as im:
            assert (im.size, im.mode, im.format) == ((side, side), "L", "PNG")
    again = corpus.table()
    assert content_hash({"kind": "dataset", "rows": t.rows}) == content_hash({"kind": "dataset", "rows": again.rows})


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    t = builtin.corpus("digits").table()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["image"]))) for r in t.rows])
    assert np.abs(pixels - digits.images * 255 / 16).max() <= 0.5
    assert [r["label"] for r in t.rows] == [str(y) for y in digits.target]


def test_content_hash_of_bytes_is_fast_and_text_ids_unchanged():
    rows = [{"text": "a", "label": "x"}]
    canonical = json.dumps({"kind": "dataset", "rows": rows}, sort_keys=True, separators=(",", ":")).encode()
    assert content_hash({"kind": "dataset", "rows": rows}) == hashlib.sha256(canonical).hexdigest()
    assert content_hash({"b": b"\x00\x01"}) != content_hash({"b": b"\x00\x02"})
    big = [{"image": bytes(50_000) + bytes([i % 256]), "label": "x"} for i in range(2000)]  # 100 MB
    # fast because each image is hashed once, as bytes, and the JSON that is hashed holds only its digest (a few
    # dozen characters, not a repr many times its size): checked by the canonical form, not by a stopwatch
    digests = [{"image": "bytes:" + hashlib.sha256(r["image"]).hexdigest(), "label": "x"} for r in big]
    canonical = json.dumps(digests, sort_keys=True, separators=(",", ":")).encode()
    assert len(canonical) < 200 * len(big)
    assert content_hash(big) == hashlib.sha256(canonical).hexdigest()


# --- CLI ----------------------------------------------------------------------------------------------------
def test_cli_data_add_folder(clean_folder, mf_home):
    env = {"MF_HOME": str(mf_home)}
    out = run_mf("data", "add", "pets", str(clean_folder), env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pets@1" in out.stdout and "7 rows" in out.stdout
    out = run_mf("data", "add", "pets", str(clean_folder), "--json", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["version"], got["rows"], got["skipped"], got["stats"]["labels"]) == (1, 7, 0, {"cats": 3, "dogs": 4})
    write(clean_folder / "cats" / "bad.png", b"nope")
    out = run_mf("data", "add", "pets", str(clean_folder), env=env, timeout=120)
    assert out.returncode == 2 and "cats/bad.png: not an image" in out.stderr
    table = clean_folder / "list.csv"
    table.write_text("file,kind\ncats/c0.png,cat\ndogs/d0.jpg,dog\n")
    out = run_mf("data", "add", "listed", str(table), "--image", "file", "--label", "kind", "--json", env=env,
                 timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stats"]["labels"] == {"cat": 1, "dog": 1}
