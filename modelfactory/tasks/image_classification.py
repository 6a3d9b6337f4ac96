"""Image classification: a convolutional network behind a preprocessing layer that is part of the model, so the
exported ONNX graph takes raw pixels (UINT8 [N, H, W, C], any H and W) and no client can resize or normalise
differently from training.

Teachers are a local Hugging Face image model dir (`AutoModelForImageClassification`) or, since no pretrained
vision weights ship offline, a ResNet-style network trained on the data (`scratch:resnet-s`, plain torch).
Students are small plain CNNs distilled from the teacher and pruned channel-wise with Torch-Pruning.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MFError
from .base import (
    ONNX_FILE,
    Bundle,
    Encoded,
    Outputs,
    Predictor,
    Prunable,
    TaskFamily,
    onnx_session,
    read_meta,
    write_meta,
)
from .convnet import ConvNet, ConvNetConfig, ImageClassifier, Preprocessing

CONVNET_FILE = "convnet.json"
INPUT = "image"  # the ONNX graph's input and the served input's name (ARCHITECTURE.md)
WEIGHTS_FILE = "model.safetensors"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
STATS_SAMPLE = 2000  # images looked at to choose the size and normalisation of a scratch teacher

# Teachers trained from scratch: stem width, then (width, residual blocks) per stage; each stage after the first
# halves the resolution.
SCRATCH_TEACHERS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "scratch:resnet-xs": (8, [(8, 1), (16, 1), (32, 1)]),
    "scratch:resnet-s": (32, [(32, 2), (64, 2), (128, 2)]),
    "scratch:resnet-m": (64, [(64, 2), (128, 2), (256, 2)]),
}


# --- pixels -------------------------------------------------------------------------------------------------
def decode_image(data: bytes, mode: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, C] in `mode` ('L' or 'RGB'), or ValueError with the reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image (unknown image format)") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable image ({str(e).splitlines()[0][:120]})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def as_pixels(x: Any, prep_mode: str) -> np.ndarray:
    """One raw input (encoded bytes, or a uint8 array [H, W] / [H, W, C]) as uint8 [H, W, C] in the model's mode."""
    if isinstance(x, bytes | bytearray | memoryview):
        return decode_image(bytes(x), prep_mode)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
            raise ValueError(f"pixel arrays must be uint8 [H, W] or [H, W, C] with C in 1, 3, 4; got {x.dtype} "
                             f"{list(x.shape)}")
        want = 1 if prep_mode == "L" else 3
        if x.ndim == 3 and x.shape[2] == want:
            return x
        from PIL import Image

        arr = np.asarray(Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x).convert(prep_mode))
        return arr[..., None] if arr.ndim == 2 else arr
    raise ValueError(f"an image input is encoded bytes or a uint8 pixel array, not {type(x).__name__}")


def _resize_float(arr: np.ndarray, size: int) -> torch.Tensor:
    """The same bilinear resize as the model's preprocessing layer, for stacking images of other sizes."""
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)


def random_affine(pixels: torch.Tensor, generator: torch.Generator, shift: float = 0.1, degrees: float = 12.0,
                  scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """[N, H, W, C] float pixels, each image warped by its own random shift (share of the side), rotation and
    scale; same shape out."""
    n = pixels.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-degrees, degrees) * (math.pi / 180)
    zoom = uniform(*scale)
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # grid coordinates span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    x = pixels.permute(0, 3, 1, 2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous()


def data_preprocessing(images: Sequence[bytes], image_size: int | None) -> Preprocessing:
    """Size, channels and normalisation chosen from the data: the most common side, grey unless any image has
    colour, per-channel mean and std of the pixels."""
    from PIL import Image

    sample = list(images[:STATS_SAMPLE])
    sizes, colour = Counter(), False
    for data in sample:
        with Image.open(io.BytesIO(data)) as img:
            sizes[max(img.size)] += 1
            colour = colour or img.mode not in GREY_MODES
    channels = 3 if colour else 1
    mode = "L" if channels == 1 else "RGB"
    pixels = np.concatenate([decode_image(d, mode).reshape(-1, channels) for d in sample]) / 255.0
    return Preprocessing(int(image_size or sizes.most_common(1)[0][0]), channels,
                         [float(v) for v in pixels.mean(0)], [float(max(v, 1e-3)) for v in pixels.std(0)])


# --- the family ----------------------------------------------------------------------------------------------
class ImageClassification(TaskFamily):
    name = "image-classification"
    roles = ("image", "label")

    # --- models -------------------------------------------------------------------------------------
    def load_teacher(self, pretrained: str, labels: list[str], params: Mapping[str, Any],
                     train: pd.DataFrame) -> Bundle:
        with torch.random.fork_rng():
            torch.manual_seed(int(params.get("seed", 0)))
            if pretrained in SCRATCH_TEACHERS:
                prep = data_preprocessing(train["image"].tolist(), params.get("image_size"))
                stem, stages = SCRATCH_TEACHERS[pretrained]
                cfg = ConvNetConfig(prep.channels, len(labels), stem,
                                    [{"width": w, "mids": [w] * blocks} for w, blocks in stages], residual=True)
                return self._bundle(ConvNet(cfg), prep, labels, {"backbone": "convnet"})
            if pretrained.startswith("scratch:"):
                raise MFError(f"unknown scratch teacher '{pretrained}'; known: {', '.join(SCRATCH_TEACHERS)}")
            return self._load_hf_teacher(pretrained, labels, params, train)

    def _load_hf_teacher(self, pretrained: str, labels: list[str], params: Mapping[str, Any],
                         train: pd.DataFrame) -> Bundle:
        from transformers import AutoModelForImageClassification

        from .pretrained import load_error, resolve

        path = resolve(pretrained)
        try:
            model = AutoModelForImageClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={lab: i for i, lab in enumerate(labels)}, ignore_mismatched_sizes=True)
        except OSError as e:
            raise load_error(pretrained, e) from e
        prep = data_preprocessing(train["image"].tolist(), params.get("image_size"))
        proc_file = Path(path) / "preprocessor_config.json"
        proc = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
        size = proc.get("size") or {}
        side = params.get("image_size") or size.get("height") or size.get("shortest_edge") or \
            getattr(model.config, "image_size", None) or prep.image_size
        channels = int(getattr(model.config, "num_channels", prep.channels))
        mean = proc.get("image_mean") or (prep.mean if channels == prep.channels else [0.5] * channels)
        std = proc.get("image_std") or (prep.std if channels == prep.channels else [0.5] * channels)
        return self._bundle(model, Preprocessing(int(side), channels, list(mean), list(std)), labels,
                            {"backbone": "hf"})

    @staticmethod
    def _bundle(backbone: nn.Module, prep: Preprocessing, labels: list[str], extra: dict[str, Any]) -> Bundle:
        return Bundle(ImageClassifier(backbone, prep), None, list(labels), {**extra, "preprocessing": asdict(prep)})

    def default_search_space(self) -> dict[str, list[Any]]:
        # The demo recipe's CNN first (examples/mnist.yaml), then narrower, shallower and wider ones.
        return {"layers": [3, 2], "hidden": [16, 8, 24], "epochs": [30.0, 15.0], "lr": [5e-3], "batch_size": [64],
                "alpha": [0.9, 0.7], "quantize": ["static", "dynamic"]}

    def build_student(self, teacher: Bundle, params: Mapping[str, Any], train: pd.DataFrame | None = None) -> Bundle:
        """A plain CNN: `layers` stages of one convolution each, `hidden` channels after the stem, doubling at
        every stage (each halves the resolution)."""
        prep = teacher.model.prep
        layers, width = int(params.get("layers") or 3), int(params.get("hidden") or 16)
        cfg = ConvNetConfig(prep.channels, len(teacher.labels), width,
                            [{"width": width * 2 ** i, "mids": []} for i in range(layers)], residual=False)
        with torch.random.fork_rng():
            torch.manual_seed(int(params.get("seed", 0)))
            return self._bundle(ConvNet(cfg), prep, teacher.labels, {"backbone": "convnet"})

    def feature_widths(self, bundle: Bundle) -> list[int]:
        prep = bundle.model.prep
        dummy = torch.zeros((1, prep.image_size, prep.image_size, prep.channels))
        was_training = bundle.model.training
        bundle.model.eval()
        with torch.no_grad():
            _, feats = bundle.model.forward_features(dummy)
        bundle.model.train(was_training)
        return [f.shape[-1] for f in feats[1:]]

    def prunable(self, bundle: Bundle, example: Mapping[str, torch.Tensor]) -> Prunable:
        """Conv channels, removed with Torch-Pruning's dependency graph (residual branches and batch norms follow);
        the classifier keeps its outputs. The saved config records the new widths, so `load` rebuilds it."""
        backbone = bundle.model.backbone
        if not isinstance(backbone, ConvNet):
            raise MFError("channel pruning supports the built-in CNNs (students, scratch teachers), not "
                          f"{type(backbone).__name__}")
        convs = [m for m in bundle.model.modules() if isinstance(m, torch.nn.Conv2d)]
        before = sum(m.out_channels for m in convs)
        return Prunable(bundle.model.eval(), dict(example), ignored_layers=[backbone.classifier],
                        finish=lambda: {"channels_before": before,
                                        "channels_after": sum(m.out_channels for m in convs)})

    def save(self, bundle: Bundle, out_dir: Path) -> None:
        from safetensors.torch import save_file

        backbone = bundle.model.backbone
        if isinstance(backbone, ConvNet):
            (out_dir / CONVNET_FILE).write_text(json.dumps(asdict(backbone.config()), indent=2))
            save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
            extra = {**bundle.extra, "backbone": "convnet"}
        else:
            backbone.save_pretrained(out_dir)
            extra = {**bundle.extra, "backbone": "hf"}
        write_meta(out_dir, {"task": self.name, "labels": bundle.labels, **extra})

    def load(self, model_dir: Path) -> Bundle:
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        meta = read_meta(model_dir)
        prep = Preprocessing(**meta["preprocessing"])
        if meta.get("backbone") == "convnet":
            backbone = ConvNet(ConvNetConfig(**json.loads((model_dir / CONVNET_FILE).read_text())))
            backbone.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=True)
        else:
            from transformers import AutoModelForImageClassification

            backbone = AutoModelForImageClassification.from_pretrained(model_dir)
        extra = {k: v for k, v in meta.items() if k not in ("task", "labels")}
        return Bundle(ImageClassifier(backbone, prep), None, meta["labels"], extra)

    # --- data ---------------------------------------------------------------------------------------
    def encode(self, bundle: Bundle, df: pd.DataFrame) -> Encoded:
        prep: Preprocessing = bundle.model.prep
        examples = []
        for data in df["image"]:
            arr = decode_image(data, prep.mode)
            same = arr.shape[:2] == (prep.image_size, prep.image_size)
            examples.append(torch.from_numpy(arr.copy()) if same else _resize_float(arr, prep.image_size))
        index = {lab: i for i, lab in enumerate(bundle.labels)}
        targets = torch.tensor([index[lab] for lab in df["label"]], dtype=torch.long)
        return Encoded(examples, targets)

    def collate(self, encoded: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"image": torch.stack([encoded.examples[i].to(torch.float32) for i in indices])}

    augments = True

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each image independently shifted by up to 10% of its side, rotated by up to 12 degrees and scaled by
        0.9-1.1 (one bilinear affine warp, edges repeated): what lets a teacher learn from a couple of hundred
        images. No flips: they change what digits and text mean."""
        return {**batch, "image": random_affine(batch["image"], generator)}

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor], *, hidden_states: bool = False,
                attentions: bool = False) -> Outputs:
        if attentions:
            raise MFError("image models have no attention maps to distil; set attention_weight to 0")
        logits, feats = model.forward_features(batch["image"], features=hidden_states)
        return Outputs(logits, feats if hidden_states else None)

    def parse_input(self, value: str) -> Any:
        path = Path(value)
        if not path.is_file():
            raise MFError(f"{value}: no such image file")
        data = path.read_bytes()
        try:
            decode_image(data, "RGB")
        except ValueError as e:
            raise MFError(f"{value}: {e}") from None
        return data

    def cli_argument(self, raw: Any, folder: Path) -> str:
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as img:
            suffix = (img.format or "png").lower()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"example.{suffix}"
        path.write_bytes(raw)
        return str(path)

    # --- export and inference -------------------------------------------------------------------------
    def export_onnx(self, bundle: Bundle, out_dir: Path, sample: pd.DataFrame) -> None:
        import warnings

        model = bundle.model.eval()
        prep: Preprocessing = model.prep
        arrays = [decode_image(d, prep.mode) for d in sample["image"].head(2)]
        pixels = torch.from_numpy(np.stack(arrays if len({a.shape for a in arrays}) == 1 else arrays[:1]))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (pixels,), str(out_dir / ONNX_FILE), input_names=[INPUT],
                              output_names=["logits"],
                              dynamic_axes={INPUT: {0: "batch", 1: "height", 2: "width"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        write_meta(out_dir, {"task": self.name, "labels": bundle.labels, "format": "onnx",
                             "preprocessing": asdict(prep)})

    def load_predictor(self, model_dir: Path, threads: int | None = None) -> Predictor:
        return ImagePredictor(Path(model_dir), threads)


class ImagePredictor(Predictor):
    """Encoded images or uint8 pixel arrays in; the ONNX graph resizes and normalises."""

    def __init__(self, model_dir: Path, threads: int | None = None):
        meta = read_meta(model_dir)
        self.model_dir = model_dir
        self.labels = meta["labels"]
        self.prep = Preprocessing(**meta["preprocessing"])
        self.session = onnx_session(model_dir, threads)

    def encode(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        arrays = [as_pixels(x, self.prep.mode) for x in inputs]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images in one batch must share a size (predict_proba groups them by size)")
        return {INPUT: np.stack(arrays)}

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Images of any sizes: decoded once, run in batches of one size each, returned in input order."""
        arrays = []
        for i, x in enumerate(inputs):
            try:
                arrays.append(as_pixels(x, self.prep.mode))
            except ValueError as e:
                raise ValueError(f"input {i + 1}: {e}") from None
        out = np.zeros((len(arrays), len(self.labels)), dtype=np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                out[chunk] = self.run({INPUT: np.stack([arrays[i] for i in chunk])})
        return out

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """One input, `image`: uint8 pixels [N, H, W, C] of any H and W, or encoded PNG/JPEG/... files as BYTES [N]
        (`datatypes` lists both; the graph itself takes the pixels)."""
        return {"inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, self.prep.channels],
                            "datatypes": ["UINT8", "BYTES"]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]}]}
