"""The image family's networks: a ConvNet whose every width lives in its config (so a channel-pruned one is
rebuilt exactly), and the classifier wrapper whose resizing and normalising layers make the exported graph take
raw pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ConvNetConfig:
    """Every width of a ConvNet, so a channel-pruned one can be rebuilt exactly from its config.

    A stage is `{"width": w, "mids": [m1, ...]}`. Plain: convolutions of widths m1, ..., w in a row. Residual: one
    basic block (conv to m_i, conv back to w, plus the shortcut) per mid; the first block of every stage has a
    projection shortcut, the others an identity, whatever the widths (pruning may make them equal)."""

    in_channels: int
    num_labels: int
    stem: int
    stages: list[dict[str, Any]]
    residual: bool = False


def _conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = _conv_bn(cin, mid, stride)
        self.conv2 = _conv_bn(mid, cout, relu=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if projection else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ConvNet(nn.Module):
    """Stem, stages, global average pool, linear classifier: ResNet-style when residual, a plain CNN if not."""

    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        self.residual = cfg.residual
        self.stem = _conv_bn(cfg.in_channels, cfg.stem)
        stages, cin = [], cfg.stem
        for i, st in enumerate(cfg.stages):
            stride, width, mids = (1 if i == 0 else 2), int(st["width"]), [int(m) for m in st["mids"]]
            if cfg.residual:
                blocks = [BasicBlock(cin if k == 0 else width, mid, width, stride if k == 0 else 1, projection=k == 0)
                          for k, mid in enumerate(mids)]
            else:
                widths = [*mids, width]
                blocks = [_conv_bn(cin if k == 0 else widths[k - 1], w, stride if k == 0 else 1)
                          for k, w in enumerate(widths)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, cfg.num_labels)

    def forward(self, x: torch.Tensor, features: bool = False):
        h = self.stem(x)
        feats = [h]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        logits = self.classifier(self.pool(h).flatten(1))
        return (logits, tuple(feats)) if features else logits

    def config(self) -> ConvNetConfig:
        """The config of the network as it is now (after pruning, its real widths)."""
        stages = []
        for stage in self.stages:
            if self.residual:
                stages.append({"width": stage[-1].conv2[0].out_channels, "mids": [b.conv1[0].out_channels
                                                                                 for b in stage]})
            else:
                outs = [m[0].out_channels for m in stage]
                stages.append({"width": outs[-1], "mids": outs[:-1]})
        return ConvNetConfig(self.stem[0].in_channels, self.classifier.out_features, self.stem[0].out_channels,
                             stages, self.residual)


@dataclass
class Preprocessing:
    image_size: int
    channels: int
    mean: list[float]  # per channel, on a 0-1 scale
    std: list[float]

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


class ImageClassifier(nn.Module):
    """Raw pixels in ([N, H, W, C], 0-255, uint8 or float), logits out. Resizing and normalising are layers here,
    so training, `mf predict`, the ONNX graph and the server all preprocess with the same operations."""

    def __init__(self, backbone: nn.Module, prep: Preprocessing):
        super().__init__()
        self.backbone = backbone
        self.prep = prep
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(prep.std).view(1, -1, 1, 1) * 255.0, persistent=False)

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).permute(0, 3, 1, 2)
        size = self.prep.image_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # identity at the right size
        return (x - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_features(image, features=False)[0]

    def forward_features(self, pixels: torch.Tensor, features: bool = True):
        """Logits and, when asked, globally pooled features of the stem and every stage ([N, C] each)."""
        x = self._normalised(pixels)
        if isinstance(self.backbone, ConvNet):
            out = self.backbone(x, features=features)
            logits, feats = out if features else (out, ())
        else:  # a Hugging Face image model
            out = self.backbone(pixel_values=x, output_hidden_states=features)
            logits, feats = out.logits, (out.hidden_states or ())
        pooled = tuple(f.mean(dim=(2, 3)) if f.ndim == 4 else f.mean(dim=1) for f in feats)
        return logits, pooled
