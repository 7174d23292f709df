"""Reference models of the published latency measurements (random weights, batch 1).

    model, make_inputs = build("mobilenet_v2")      # make_inputs(seconds) -> input tuple
    REFERENCE["mobilenet_v2"].published_macs         # the count its source publishes

Architectures follow the benchmark's own definition (cited per entry); MAC counts are checked
against the published counts in tests/test_latency_published.py (within 3 %). Weights are random:
latency on a dense runtime does not depend on their values.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.errors import WorkbenchError


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU,
         padding: int | tuple | None = None) -> nn.Sequential:
    pad = (k - 1) // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class DSCNN(nn.Module):
    """MLPerf Tiny keyword spotting DS-CNN (mlcommons/tiny, benchmark/training/keyword_spotting):
    49x10 MFCC, conv 64 (10x4, stride 2), 4 x (depthwise 3x3 + pointwise 64), avg pool, FC 12."""

    def __init__(self, filters: int = 64, blocks: int = 4, classes: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, filters, (10, 4), (2, 2), padding=(5, 1)), nn.BatchNorm2d(filters),
            nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(
            _cbr(filters, filters, 3, groups=filters), _cbr(filters, filters, 1))
            for _ in range(blocks)])
        self.fc = nn.Linear(filters, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # (B, 1, 49, 10)
        h = self.blocks(self.stem(x))                          # (B, 64, 25, 5)
        return self.fc(h.mean(dim=(2, 3)))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017, arXiv:1704.04861), width multiplier `alpha`."""

    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
          [(1024, 2), (1024, 1)]

    def __init__(self, alpha: float = 1.0, classes: int = 1000) -> None:
        super().__init__()
        c = int(32 * alpha)
        layers: list[nn.Module] = [_cbr(3, c, 3, 2)]
        for out, stride in self.CFG:
            o = int(out * alpha)
            layers += [_cbr(c, c, 3, stride, groups=c), _cbr(c, o, 1)]
            c = o
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, se: bool,
                 act: type) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(_cbr(cin, expand, 1, act=act))
        layers.append(_cbr(expand, expand, k, stride, groups=expand, act=act))
        if se:
            layers.append(_SqueezeExcite(expand))
        layers.append(_cbr(expand, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        s = _make_divisible(c // 4)
        self.fc1 = nn.Conv2d(c, s, 1)
        self.fc2 = nn.Conv2d(s, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        w = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(w))))
        return x * w


def _make_divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 (Sandler et al. 2018, arXiv:1801.04381)."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        c = 32
        layers: list[nn.Module] = [_cbr(3, c, 3, 2, act=nn.ReLU6)]
        for t, out, n, s in self.CFG:
            for i in range(n):
                layers.append(_InvertedResidual(c, out, 3, s if i == 0 else 1, c * t, False,
                                                nn.ReLU6))
                c = out
        layers.append(_cbr(c, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class MobileNetV3(nn.Module):
    """MobileNetV3 Large / Small (Howard et al. 2019, arXiv:1905.02244, tables 1 and 2)."""

    LARGE = [(3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2),
             (3, 72, 24, False, "RE", 1), (5, 72, 40, True, "RE", 2),
             (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
             (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1),
             (3, 184, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
             (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
             (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1),
             (5, 960, 160, True, "HS", 1)]
    SMALL = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2),
             (3, 88, 24, False, "RE", 1), (5, 96, 40, True, "HS", 2),
             (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
             (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1),
             (5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1),
             (5, 576, 96, True, "HS", 1)]

    def __init__(self, size: str = "large", classes: int = 1000) -> None:
        super().__init__()
        cfg, last, head = ((self.LARGE, 960, 1280) if size == "large" else
                           (self.SMALL, 576, 1024))
        c = 16
        layers: list[nn.Module] = [_cbr(3, c, 3, 2, act=nn.Hardswish)]
        for k, exp, out, se, nl, s in cfg:
            layers.append(_InvertedResidual(c, out, k, s, exp, se,
                                            nn.ReLU if nl == "RE" else nn.Hardswish))
            c = out
        layers.append(_cbr(c, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Linear(head, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _cbr(cin, cout, 3, stride)
        self.conv2 = _cbr(cout, cout, 3, act=None)
        self.short = (nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.short is None else self.short(x)
        return torch.relu(self.conv2(self.conv1(x)) + s)


class ResNet8(nn.Module):
    """MLPerf Tiny image classification ResNet-8 (CIFAR-10, 32x32): conv 16, three residual
    stacks 16/32/64, average pool, FC 10 (mlcommons/tiny, training/image_classification)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.stacks = nn.Sequential(_ResBlock(16, 16, 1), _ResBlock(16, 32, 2),
                                    _ResBlock(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stacks(self.stem(x)).mean(dim=(2, 3)))


class ToyAdmosAutoencoder(nn.Module):
    """MLPerf Tiny anomaly detection FC autoencoder (ToyADMOS, 640 inputs): 4 x Dense 128 + BN +
    ReLU, Dense 8 bottleneck, 4 x Dense 128, Dense 640 (mlcommons/tiny, anomaly_detection)."""

    def __init__(self) -> None:
        super().__init__()
        dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(128, 640))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _WhisperBlock(nn.Module):
    """Pre-LN transformer block with attention written out (no attribute names needed)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d), nn.Linear(d, d, bias=False),
                                          nn.Linear(d, d), nn.Linear(d, d))
        self.ln2 = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q = self.q(h).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(h).view(b, t, self.heads, -1).transpose(1, 2)
        v = self.v(h).view(b, t, self.heads, -1).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class WhisperEncoder(nn.Module):
    """Whisper audio encoder (Radford et al. 2022; openai/whisper model.py AudioEncoder):
    80-mel input at 100 frames/s, conv 3 + GELU, conv 3 stride 2 + GELU, positional embedding,
    pre-LN blocks, final LN. tiny: 4 layers x 384 (6 heads); base: 6 x 512 (8 heads)."""

    def __init__(self, d: int = 384, layers: int = 4, heads: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(80, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.zeros(1500, d))
        self.blocks = nn.ModuleList([_WhisperBlock(d, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:      # (B, 80, T)
        x = nn.functional.gelu(self.conv1(mel))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)  # (B, T/2, d)
        x = x + self.pos[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


@dataclass(frozen=True)
class Reference:
    """A reference model: its builder, inputs, the published MAC count and where it is from."""

    build: Callable[[], nn.Module]
    inputs: Callable[[float], tuple[Any, ...]]
    published_macs: float | None
    macs_source: str
    family: str                 # "cnn" or "transformer"


def _image(c: int, h: int, w: int) -> Callable[[float], tuple[torch.Tensor]]:
    return lambda seconds=0.0: (torch.randn(1, c, h, w),)


def _mel(seconds: float = 30.0) -> tuple[torch.Tensor]:
    return (torch.randn(1, 80, int(round(seconds * 100))),)


REFERENCE: dict[str, Reference] = {
    "ds_cnn_kws": Reference(DSCNN, _image(1, 49, 10), 2.66e6,
                            "MLPerf Tiny KWS DS-CNN, 2.66 M MACs (../shared/devices.md; "
                            "Banbury et al. 2021, arXiv:2106.07597)", "cnn"),
    "mobilenet_v1_025_vww": Reference(lambda: MobileNetV1(0.25, 2), _image(3, 96, 96), 7.49e6,
                                      "MLPerf Tiny VWW MobileNetV1 0.25x 96x96: 7.49 M MACs "
                                      "(arXiv:2106.07597 table 1)", "cnn"),
    "resnet8_cifar": Reference(ResNet8, _image(3, 32, 32), 12.5e6,
                               "MLPerf Tiny IC ResNet-8: 12.5 M MACs (arXiv:2106.07597)", "cnn"),
    "toyadmos_autoencoder": Reference(ToyAdmosAutoencoder, lambda s=0.0: (torch.randn(1, 640),),
                                      0.264e6, "MLPerf Tiny AD FC autoencoder: 0.264 M MACs "
                                      "(arXiv:2106.07597)", "cnn"),
    "mobilenet_v1": Reference(MobileNetV1, _image(3, 224, 224), 569e6,
                              "MobileNetV1 1.0 224: 569 M mult-adds (arXiv:1704.04861 table 8)",
                              "cnn"),
    "mobilenet_v2": Reference(MobileNetV2, _image(3, 224, 224), 300e6,
                              "MobileNetV2 1.0 224: 300 M MAdds (arXiv:1801.04381 table 4)",
                              "cnn"),
    "mobilenet_v3_large": Reference(lambda: MobileNetV3("large"), _image(3, 224, 224), 217e6,
                                    "MobileNetV3-Large 1.0: 217 M MAdds (arXiv:1905.02244 "
                                    "table 3)", "cnn"),
    "mobilenet_v3_small": Reference(lambda: MobileNetV3("small"), _image(3, 224, 224), 56e6,
                                    "MobileNetV3-Small 1.0: 56 M MAdds (arXiv:1905.02244 "
                                    "table 3)", "cnn"),
    "whisper_tiny_encoder": Reference(lambda: WhisperEncoder(384, 4, 6), _mel, None,
                                      "no published MAC count; params 8.2 M checked instead "
                                      "(openai/whisper model card: tiny 39 M total)",
                                      "transformer"),
    "whisper_base_encoder": Reference(lambda: WhisperEncoder(512, 6, 8), _mel, None,
                                      "no published MAC count; params checked instead "
                                      "(openai/whisper model card: base 74 M total)",
                                      "transformer"),
}


def build(name: str) -> tuple[nn.Module, Callable[[float], tuple[Any, ...]]]:
    """(model, make_inputs) of a reference model; unknown names list the known ones."""
    if name not in REFERENCE:
        close = difflib.get_close_matches(name, list(REFERENCE), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise WorkbenchError(f"model: unknown reference model '{name}'.{hint} Known: "
                             f"{', '.join(REFERENCE)}.")
    torch.manual_seed(0)
    ref = REFERENCE[name]
    return ref.build().eval(), ref.inputs
