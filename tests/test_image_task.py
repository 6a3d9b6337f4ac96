"""Image classification through the task-family contract: families are discovered (plugins through entry points
too) and never named by the layers above them; the built-in CNNs lose real channels when pruned and reload at
their new shapes; the ONNX graph resizes and normalises raw uint8 pixels exactly as PyTorch does; the predictor
takes encoded bytes or pixel arrays of any size; a Hugging Face image model works as a teacher; static INT8
quantization puts Q/DQ around the convolutions and keeps the predictions."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from PIL import Image

from modelfactory import tasks
from modelfactory.compress.export import export_and_verify
from modelfactory.compress.prune import prune
from modelfactory.compress.quantize import quantize_static_int8
from modelfactory.errors import MFError
from modelfactory.factory.spec import parse_spec
from modelfactory.tasks.image_classification import ConvNet, ImageClassification, ImagePredictor, decode_image

PACKAGE = Path(tasks.__file__).resolve().parents[1]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def resized(data: bytes, width: int, height: int) -> bytes:
    """The same image as a PNG of another size (bilinear: not a plain pixel repeat the model could undo)."""
    with Image.open(io.BytesIO(data)) as img:
        return png(np.asarray(img.convert("L").resize((width, height), Image.BILINEAR)))


def torch_probs(bundle, pixels: np.ndarray) -> np.ndarray:
    bundle.model.eval()
    with torch.no_grad():
        return torch.softmax(bundle.model(torch.from_numpy(pixels.copy())), dim=-1).numpy()


@pytest.fixture(scope="module")
def rows(digits_df) -> pd.DataFrame:
    """40 real 8x8 digits (every label appears)."""
    df = digits_df.head(40).reset_index(drop=True)
    assert df["label"].nunique() == 10
    return df


@pytest.fixture(scope="module")
def labels(rows) -> list[str]:
    return sorted(rows["label"].unique())


# --- discovery ---------------------------------------------------------------------------------------------
def test_builtin_families_are_discovered():
    assert {"image-classification", "text-classification"} <= set(tasks.names())
    family = tasks.get("image-classification")
    assert isinstance(family, ImageClassification) and family.roles == ("image", "label")
    with pytest.raises(MFError, match=r"unknown task 'nope'; known tasks: .*image-classification"):
        tasks.get("nope")


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a one-module plugin distribution (module + dist-info with entry points) on sys.path."""
    root = tmp_path / "site"

    def install(module_source: str, entry_point: str) -> Path:
        root.mkdir()
        (root / "mf_plugin_demo.py").write_text(module_source)
        info = root / "mf_plugin_demo-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mf-plugin-demo\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[modelfactory.tasks]\n{entry_point}\n")
        monkeypatch.syspath_prepend(str(root))
        tasks.refresh()
        return root

    yield install
    sys.modules.pop("mf_plugin_demo", None)
    tasks.refresh()  # the next names() rediscovers without the plugin (monkeypatch restores sys.path)


TOY = '''
from modelfactory.tasks.image_classification import ImageClassification


class ToyTask(ImageClassification):
    name = "toy-task"
'''


def test_plugin_family_is_discovered_through_its_entry_point(install_plugin):
    assert "toy-task" not in tasks.names()
    root = install_plugin(TOY, "toy = mf_plugin_demo:ToyTask")
    assert "toy-task" in tasks.names() and "image-classification" in tasks.names()
    toy = tasks.get("toy-task")
    assert type(toy).__name__ == "ToyTask" and toy.name == "toy-task"
    spec = parse_spec({"name": "toy-order", "task": "toy-task", "data": {"dataset": "anything"},
                       "teacher": {"model": "scratch:resnet-xs"}})
    assert spec.task == "toy-task"

    sys.path.remove(str(root))  # uninstalled: refresh() forgets it
    tasks.refresh()
    assert "toy-task" not in tasks.names()
    with pytest.raises(MFError, match="unknown task 'toy-task'"):
        parse_spec({"name": "toy-order", "task": "toy-task", "data": {"dataset": "anything"},
                    "teacher": {"model": "scratch:resnet-xs"}})


@pytest.mark.parametrize("source,entry,match", [
    ("NOT_A_CLASS = 42\n", "bad = mf_plugin_demo:NOT_A_CLASS", "entry point 'bad' = 'mf_plugin_demo:NOT_A_CLASS'"),
    (TOY.replace('"toy-task"', '"image-classification"'), "dup = mf_plugin_demo:ToyTask",
     "two task families are named 'image-classification'"),
])
def test_bad_plugin_entry_points_are_named(install_plugin, source, entry, match):
    install_plugin(source, entry)
    with pytest.raises(MFError, match=re.escape(match)):
        tasks.names()


# Layers that must see families only through tasks.get(name) (ARCHITECTURE.md: "must not hard-code a task"). That
# they never import a family's module (or its classes) is an import contract (pyproject.toml, `make lint`); this
# test catches what imports cannot: a family's name written as a string (a task name, a module name to import).
FAMILY_NAMES = re.compile(r"image-classification|text-classification|causal-lm|"
                          r"image_classification|text_classification|causal_lm")
NEUTRAL_LAYERS = ("factory", "compute", "serve", "compress", "train", "api", "accounts", "registry")


def test_layers_above_the_tasks_never_name_a_family_as_a_string():
    folders = [PACKAGE / layer for layer in NEUTRAL_LAYERS if (PACKAGE / layer).is_dir()]
    assert PACKAGE / "factory" in folders
    files = [p for folder in folders for p in sorted(folder.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    assert files
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
                 for p in files for i, line in enumerate(p.read_text(errors="ignore").splitlines(), start=1)
                 if FAMILY_NAMES.search(line)]
    assert offenders == []


# --- channel pruning of the built-in CNNs ------------------------------------------------------------------
@pytest.mark.parametrize("which", ["student", "scratch:resnet-xs"])
def test_channel_pruning_removes_parameters_and_reloads(which, rows, labels, tmp_path):
    task = ImageClassification()
    teacher = task.load_teacher("scratch:resnet-xs", labels, {"seed": 0}, rows)
    bundle = task.build_student(teacher, {"layers": 2, "hidden": 8}) if which == "student" else teacher
    backbone = bundle.model.backbone
    assert isinstance(backbone, ConvNet) and backbone.residual == (which != "student")
    cfg_before, before = backbone.config(), n_params(bundle.model)
    batch = task.collate(task.encode(bundle, rows), list(range(len(rows))))

    report = prune(task.prunable(bundle, {"image": batch["image"][:4]}), 0.5)

    after = n_params(bundle.model)
    assert (report["parameters_before"], report["parameters_after"]) == (before, after)
    assert after < 0.5 * before  # half the channels of every conv: roughly a quarter of the conv weights
    assert report["channels_after"] <= 0.6 * report["channels_before"]
    cfg = backbone.config()
    assert cfg.residual == cfg_before.residual and cfg.num_labels == len(labels) == backbone.classifier.out_features
    assert cfg.stem < cfg_before.stem
    assert all(new["width"] < old["width"] and len(new["mids"]) == len(old["mids"])
               for new, old in zip(cfg.stages, cfg_before.stages))
    assert task.feature_widths(bundle) == [st["width"] for st in cfg.stages]

    bundle.model.eval()
    with torch.no_grad():
        logits = task.forward(bundle.model, batch).logits
    assert logits.shape == (len(rows), len(labels)) and torch.isfinite(logits).all()

    out = tmp_path / "pruned"
    out.mkdir()
    task.save(bundle, out)
    assert json.loads((out / "convnet.json").read_text())["stem"] == cfg.stem
    loaded = task.load(out)  # strict load_state_dict at the smaller shapes
    assert n_params(loaded.model) == after and loaded.labels == labels
    assert loaded.model.backbone.config() == cfg
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(task.forward(loaded.model, batch).logits, logits)
    parity = export_and_verify(task, loaded, tmp_path, rows)  # the smaller network exports too
    assert parity["parity_max_abs_diff"] <= 1e-3


def test_prune_ratio_out_of_range_is_refused(rows, labels):
    task = ImageClassification()
    bundle = task.build_student(task.load_teacher("scratch:resnet-xs", labels, {}, rows), {"layers": 1})
    batch = task.collate(task.encode(bundle, rows.head(2)), [0, 1])
    with pytest.raises(ValueError, match="ratio must be in"):
        prune(task.prunable(bundle, batch), 1.0)


# --- export and the predictor ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, rows, labels):
    """An untrained scratch:resnet-xs on 40 digits, exported; (task, bundle, model dir, parity report)."""
    task = ImageClassification()
    bundle = task.load_teacher("scratch:resnet-xs", labels, {"seed": 0}, rows)
    out = tmp_path_factory.mktemp("resnet-xs-onnx")
    parity = export_and_verify(task, bundle, out, rows)
    return task, bundle, out, parity


def test_export_passes_parity_with_a_uint8_pixels_graph(exported, rows, labels):
    task, bundle, out, parity = exported
    assert parity["parity_max_abs_diff"] <= 1e-3 and parity["parity_rows"] == len(rows)
    assert parity["parity_argmax_agreement"] == 1.0
    meta = json.loads((out / "mf_model.json").read_text())
    assert meta["task"] == "image-classification" and meta["labels"] == labels
    assert meta["preprocessing"]["image_size"] == 8 and meta["preprocessing"]["channels"] == 1
    graph = onnx.load(str(out / "model.onnx")).graph
    (inp,) = graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1:] == ["height", "width", 1]
    assert dims[0].dim_param  # dynamic batch
    assert "Resize" in {n.op_type for n in graph.node}  # preprocessing is in the graph

    predictor = task.load_predictor(out)
    assert isinstance(predictor, ImagePredictor) and predictor.labels == labels
    assert predictor.signature["inputs"] == [  # ARCHITECTURE.md: `image` UINT8 [N, H, W, C] or encoded BYTES
        {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 1], "datatypes": ["UINT8", "BYTES"]}]
    assert {o["name"]: o["datatype"] for o in predictor.signature["outputs"]} == {"label": "BYTES",
                                                                                  "probabilities": "FP32"}


def test_bytes_and_pixel_arrays_give_the_same_predictions(exported, rows):
    task, _, out, _ = exported
    predictor = task.load_predictor(out)
    raw = rows["image"].tolist()
    pixels = [decode_image(x, "L") for x in raw]  # uint8 [8, 8, 1]
    from_bytes = predictor.predict_proba(raw)
    assert from_bytes.shape == (len(raw), 10)
    np.testing.assert_allclose(from_bytes.sum(1), 1, atol=1e-5)
    for variant in (pixels, [p[..., 0] for p in pixels], [np.repeat(p, 3, axis=2) for p in pixels]):
        np.testing.assert_allclose(predictor.predict_proba(variant), from_bytes, atol=1e-6)
    assert [lab for lab, _ in predictor.predict(raw)] == [predictor.labels[i] for i in from_bytes.argmax(1)]
    assert predictor.predict_proba([]).shape == (0, 10)


def test_other_image_sizes_are_resized_in_the_graph_as_in_torch(exported, rows):
    task, bundle, out, _ = exported
    predictor = task.load_predictor(out)
    for width, height in ((16, 16), (12, 20)):
        bigger = [resized(x, width, height) for x in rows["image"].head(8)]
        onnx_probs = predictor.predict_proba(bigger)
        pixels = np.stack([decode_image(x, "L") for x in bigger])
        assert pixels.shape == (8, height, width, 1)
        np.testing.assert_allclose(onnx_probs, torch_probs(bundle, pixels), atol=1e-4)


def test_a_batch_of_mixed_sizes_comes_back_in_input_order(exported, rows):
    task, _, out, _ = exported
    predictor = task.load_predictor(out)
    raw = rows["image"].tolist()
    mixed = [raw[0], resized(raw[1], 16, 16), raw[2], resized(raw[3], 12, 20), resized(raw[4], 16, 16), raw[5],
             decode_image(raw[6], "L"), resized(raw[7], 16, 16)]
    one_by_one = np.concatenate([predictor.predict_proba([x]) for x in mixed])
    assert len({tuple(np.round(p, 6)) for p in one_by_one}) == len(mixed)  # every row tells its input apart
    for batch_size in (64, 2):
        np.testing.assert_allclose(predictor.predict_proba(mixed, batch_size=batch_size), one_by_one, atol=1e-6)
    assert [lab for lab, _ in predictor.predict(mixed)] == [predictor.labels[i] for i in one_by_one.argmax(1)]
    with pytest.raises(ValueError, match="share a size"):
        predictor.encode(mixed[:2])


def test_bad_inputs_are_named_by_their_position(exported, rows):
    task, _, out, _ = exported
    predictor = task.load_predictor(out)
    good = rows["image"].tolist()[:2]
    with pytest.raises(ValueError, match=r"^input 3: not an image"):
        predictor.predict_proba([*good, b"definitely not an image"])
    noise = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"^input 2: not a readable image \(.*truncated"):
        predictor.predict_proba([good[0], noise[: len(noise) // 2]])
    with pytest.raises(ValueError, match=r"^input 2: pixel arrays must be uint8"):
        predictor.predict([good[0], np.zeros((8, 8), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"^input 1: an image input is encoded bytes or a uint8 pixel array"):
        predictor.predict(["a path as a string"])


def test_cli_inputs_are_image_files(tmp_path, rows):
    task = ImageClassification()
    raw = rows["image"].iloc[0]
    path = Path(task.cli_argument(raw, tmp_path / "hints"))
    assert path.is_file() and path.suffix == ".png" and path.read_bytes() == raw
    assert task.parse_input(str(path)) == raw
    with pytest.raises(MFError, match="no such image file"):
        task.parse_input(str(tmp_path / "missing.png"))


# --- a Hugging Face teacher --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory) -> Path:
    """A tiny grey-input ResNet saved as a Hugging Face model dir (3 labels: the head must be replaced)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    out = tmp_path_factory.mktemp("hf-resnet")
    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=3)
    ResNetForImageClassification(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.3], "image_std": [0.4], "size": {"height": 16, "width": 16}}))
    return out


def test_hf_teacher_loads_distils_and_refuses_channel_pruning(hf_resnet, rows, labels):
    task = ImageClassification()
    teacher = task.load_teacher(str(hf_resnet), labels, {}, rows)
    prep = teacher.model.prep
    assert (prep.image_size, prep.channels, prep.mean, prep.std) == (16, 1, [0.3], [0.4])
    assert teacher.extra["backbone"] == "hf" and teacher.labels == labels
    assert task.feature_widths(teacher) == [8, 16]  # one per stage, the embedding output excluded
    batch = task.collate(task.encode(teacher, rows), list(range(len(rows))))
    assert batch["image"].shape == (len(rows), 16, 16, 1)  # 8x8 digits resized to the checkpoint's size
    out = task.forward(teacher.model.eval(), batch, hidden_states=True)
    assert out.logits.shape == (len(rows), len(labels))  # a fresh 10-label head
    assert [h.shape[-1] for h in out.hidden_states[1:]] == [8, 16]

    student = task.build_student(teacher, {"layers": 2, "hidden": 8})
    assert isinstance(student.model.backbone, ConvNet) and student.model.prep == prep
    assert n_params(student.model) < n_params(teacher.model)
    assert task.feature_widths(student) == [8, 16]
    s_out = task.forward(student.model, task.collate(task.encode(student, rows), [0, 1, 2]), hidden_states=True)
    assert s_out.logits.shape == (3, len(labels)) and torch.isfinite(s_out.logits).all()

    with pytest.raises(MFError, match="channel pruning supports the built-in CNNs"):
        prune(task.prunable(teacher, {"image": batch["image"][:2]}), 0.3)


def test_hf_teacher_roundtrips_and_exports(hf_resnet, rows, labels, tmp_path):
    task = ImageClassification()
    teacher = task.load_teacher(str(hf_resnet), labels, {}, rows)
    saved = tmp_path / "saved"
    saved.mkdir()
    task.save(teacher, saved)
    assert (saved / "config.json").is_file() and not (saved / "convnet.json").exists()
    loaded = task.load(saved)
    assert loaded.labels == labels and loaded.model.prep == teacher.model.prep
    assert type(loaded.model.backbone) is type(teacher.model.backbone)
    batch = task.collate(task.encode(loaded, rows), list(range(len(rows))))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(batch["image"]), teacher.model.eval()(batch["image"]))
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    parity = export_and_verify(task, loaded, onnx_dir, rows)
    assert parity["parity_max_abs_diff"] <= 1e-3 and parity["parity_argmax_agreement"] == 1.0


def test_hf_teacher_without_a_preprocessor_config_uses_the_data(hf_resnet, rows, labels, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(hf_resnet, bare, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    task = ImageClassification()
    prep = task.load_teacher(str(bare), labels, {}, rows).model.prep
    pixels = np.concatenate([decode_image(x, "L").ravel() for x in rows["image"]]) / 255.0
    assert prep.image_size == 8 and prep.channels == 1
    assert prep.mean == pytest.approx([pixels.mean()]) and prep.std == pytest.approx([pixels.std()])
    assert task.load_teacher(str(bare), labels, {"image_size": 12}, rows).model.prep.image_size == 12


# --- static INT8 ---------------------------------------------------------------------------------------------
def test_static_int8_puts_qdq_around_convolutions_and_keeps_predictions(digits_df, tmp_path):
    task = ImageClassification()
    train, test = digits_df.iloc[:240].reset_index(drop=True), digits_df.iloc[1000:1040].reset_index(drop=True)
    labels = sorted(train["label"].unique())
    student = task.build_student(task.load_teacher("scratch:resnet-xs", labels, {}, train),
                                 {"layers": 2, "hidden": 8})
    encoded = task.encode(student, train)
    torch.manual_seed(0)
    opt = torch.optim.Adam(student.model.parameters(), lr=1e-2)
    student.model.train()
    for _ in range(60):  # a few steps: weights with real structure, so INT8 rounding has something to break
        idx = torch.randperm(len(encoded))[:32].tolist()
        loss = task.loss(task.forward(student.model, task.collate(encoded, idx)), encoded.targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    fp32_dir, int8_dir = tmp_path / "fp32", tmp_path / "int8"
    fp32_dir.mkdir()
    int8_dir.mkdir()
    export_and_verify(task, student, fp32_dir, test)
    fp32 = task.load_predictor(fp32_dir)
    shutil.copy2(fp32_dir / "mf_model.json", int8_dir / "mf_model.json")
    feeds = [fp32.encode([x]) for x in train["image"].head(64)]
    quantize_static_int8(fp32_dir / "model.onnx", int8_dir / "model.onnx", feeds)

    graph = onnx.load(str(int8_dir / "model.onnx")).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 3  # stem + 2 stages
    for conv in convs:
        assert producer.get(conv.input[0]) == "DequantizeLinear"  # activations
        assert producer.get(conv.input[1]) == "DequantizeLinear"  # weights
        assert "QuantizeLinear" in consumers.get(conv.output[0], [])

    int8 = task.load_predictor(int8_dir)  # onnxruntime loads it
    inputs = test["image"].tolist()
    fp32_pred, int8_pred = fp32.predict_proba(inputs).argmax(1), int8.predict_proba(inputs).argmax(1)
    truth = np.array([labels.index(lab) for lab in test["label"]])
    assert (fp32_pred == truth).mean() >= 0.6  # the weights are trained: agreement below is not trivial
    assert (int8_pred == fp32_pred).mean() >= 0.9
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_static_int8(fp32_dir / "model.onnx", tmp_path / "never.onnx", [])


# --- augmentation (teacher.augment) --------------------------------------------------------------------------


def test_random_affine_keeps_shape_is_seeded_and_moves_pixels(rows):
    from modelfactory.tasks.image_classification import random_affine

    pixels = torch.from_numpy(np.stack([decode_image(d, "L") for d in rows["image"].head(8)])).float()
    a = random_affine(pixels, torch.Generator().manual_seed(3))
    b = random_affine(pixels, torch.Generator().manual_seed(3))
    c = random_affine(pixels, torch.Generator().manual_seed(4))
    assert a.shape == pixels.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)  # the generator decides, nothing else
    assert (a - pixels).abs().mean() > 0.5  # really perturbed...
    assert 0 <= a.min() and a.max() <= 255  # ...as pixels (bilinear, edges repeated: no values out of range)
    same = random_affine(pixels, torch.Generator(), shift=0.0, degrees=0.0, scale=(1.0, 1.0))
    assert torch.allclose(same, pixels, atol=1e-3)  # no warp asked: the images as they were


def test_teacher_augment_reaches_the_fine_tune_stage_and_only_image_families_take_it(rows, labels, tmp_path):
    from modelfactory.artifacts import Artifact
    from modelfactory.factory.planner import teacher_plan
    from modelfactory.factory.stages import StageContext, finetune_stage

    order = {"name": "digits", "task": "image-classification", "data": {"dataset": "digits"},
             "teacher": {"model": "scratch:resnet-xs", "epochs": 1, "batch_size": 16}}
    plain = teacher_plan(parse_spec(order), "a" * 64).node("teacher").params
    order["teacher"]["augment"] = True
    params = teacher_plan(parse_spec(order), "a" * 64).node("teacher").params
    assert "augment" not in plain and params["augment"] is True  # absent by default: old cache keys still hit
    with pytest.raises(MFError, match="no training augmentation"):
        teacher_plan(parse_spec({**order, "task": "text-classification", "data": {"dataset": "reviews"}}), "a" * 64)

    split = tmp_path / "split"
    split.mkdir()
    for part in ("train", "val"):
        rows.to_parquet(split / f"{part}.parquet", index=False)
    seen = []
    family = tasks.get("image-classification")
    original = type(family).augment

    def spy(self, batch, generator):
        seen.append(len(batch["image"]))
        return original(self, batch, generator)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(family), "augment", spy)
        result = finetune_stage(StageContext(out, tmp_path / "work"),
                                {"split": Artifact("s", split, {"labels": labels})},
                                {**params, "_pretrained": "scratch:resnet-xs"})
    assert seen == [16, 16, 8] and result["metrics"]["steps"] == 3  # every training batch, 40 rows
