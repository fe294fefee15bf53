"""The coverage zoo: tiny seeded architectures, one per structure lcpaq must capture, quantize,
cost and build (``lcpaq.tools.coverage_report``, ``tests/coverage``).

Each builder returns ``(model, example_inputs, data)`` like a ``--model path/to/file.py:function``
bundle (``data``: four seeded batches of four rows, half for calibration, half for evaluation);
``--model coverage/<name>`` loads one through the zoo. Weights come from ``torch.manual_seed(0)``
inside the builder, inputs from seeded generators; widths are 8-64, inputs 1x3x32x32 images,
1x16 token ids or a 1x12x16 sequence, so the whole zoo quantizes and builds in CI.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lcpaq.tools.models.coverage_attention import llama, swin, vit
from lcpaq.tools.models.coverage_common import Built, image as _image, with_data as _with_data


def _bn(c: int) -> nn.BatchNorm2d:
    """A batch norm with seeded, non-trivial inference statistics (fold-bn folds it)."""
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.7, 1.3)
        bn.bias.uniform_(-0.1, 0.1)
    return bn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), _bn(cout))


class _Classifier(nn.Module):
    """``features`` then global average pooling and a linear head."""

    def __init__(self, features: nn.Module, width: int, classes: int = 10) -> None:
        super().__init__()
        self.features, self.fc = features, nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# -- CNNs ------------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.c2 = _conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3)
        self.down = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c2(torch.relu(self.c1(x))) + self.down(x))


def resnet() -> Built:
    """ResNet with basic blocks: stem, an identity block and a strided block with a 1x1 downsample."""
    torch.manual_seed(0)
    feats = nn.Sequential(_conv_bn(3, 16, 3), nn.ReLU(), _BasicBlock(16, 16, 1), _BasicBlock(16, 32, 2))
    return _with_data(_Classifier(feats, 32), _image())


class _NeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1, grouped 3x3 (cardinality 4), 1x1, projection shortcut."""

    def __init__(self, cin: int, width: int, cout: int, groups: int) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(cin, width, 1), _conv_bn(width, width, 3, groups=groups)
        self.c, self.down = _conv_bn(width, cout, 1), _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))) + self.down(x))


def resnext() -> Built:
    torch.manual_seed(0)
    feats = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU(), _NeXtBlock(16, 32, 64, groups=4))
    return _with_data(_Classifier(feats, 64), _image())


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _conv_bn(cin, hid, 1), nn.ReLU6(), _conv_bn(hid, hid, 3, stride, groups=hid), nn.ReLU6(), _conv_bn(hid, cout, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenetv2() -> Built:
    torch.manual_seed(0)
    feats = nn.Sequential(
        _conv_bn(3, 16, 3, 2), nn.ReLU6(), _InvertedResidual(16, 16, 1, 3), _InvertedResidual(16, 24, 2, 3),
        _conv_bn(24, 64, 1), nn.ReLU6(),
    )
    return _with_data(_Classifier(feats, 64), _image())


class _SqueezeExcite(nn.Module):
    """Squeeze-excite: pool, 1x1 reduce + ``act``, 1x1 expand + ``gate``, scale the input."""

    def __init__(self, c: int, squeeze: int, act: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.reduce, self.expand, self.act, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), act, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class _MBConv(nn.Module):
    """Expand, depthwise ``k``x``k``, squeeze-excite, project; ``act`` after expand and depthwise."""

    def __init__(self, cin: int, hid: int, cout: int, k: int, stride: int, act: Callable[[], nn.Module], se: nn.Module) -> None:
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _conv_bn(cin, hid, 1), act(), _conv_bn(hid, hid, k, stride, groups=hid), act(), se, _conv_bn(hid, cout, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenetv3() -> Built:
    """MobileNetV3: hardswish, a 5x5 depthwise, squeeze-excite gated by hardsigmoid, hardswish head."""
    torch.manual_seed(0)
    se = _SqueezeExcite(40, 16, nn.ReLU(), nn.Hardsigmoid())
    feats = nn.Sequential(
        _conv_bn(3, 16, 3, 2), nn.Hardswish(), _MBConv(16, 40, 24, 5, 2, nn.Hardswish, se), _conv_bn(24, 48, 1), nn.Hardswish(),
    )
    model = _Classifier(feats, 48)
    model.fc = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Linear(32, 10))
    return _with_data(model, _image())


def efficientnet() -> Built:
    """EfficientNet-like: SiLU throughout, MBConv with a sigmoid-gated squeeze-excite."""
    torch.manual_seed(0)
    feats = nn.Sequential(
        _conv_bn(3, 16, 3, 2), nn.SiLU(),
        _MBConv(16, 64, 16, 3, 1, nn.SiLU, _SqueezeExcite(64, 8, nn.SiLU(), nn.Sigmoid())),
        _MBConv(16, 64, 24, 3, 2, nn.SiLU, _SqueezeExcite(64, 8, nn.SiLU(), nn.Sigmoid())),
        _conv_bn(24, 64, 1), nn.SiLU(),
    )
    return _with_data(_Classifier(feats, 64), _image())


class _ConvNeXtBlock(nn.Module):
    """7x7 depthwise; permute to NHWC; LayerNorm and an MLP of nn.Linear on channels-last;
    layer scale; permute back; residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.up, self.down = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(F.gelu(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class _ConvNeXt(nn.Module):
    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, c, 4, stride=4), _ConvNeXtBlock(c)
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.block(self.stem(x)).mean((2, 3))))


def convnext() -> Built:
    torch.manual_seed(0)
    return _with_data(_ConvNeXt(), _image())


class _UNet(nn.Module):
    """Two-level UNet: encoder, max-pool, bottleneck, interpolate up, concat the skip, decode."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(_conv_bn(3, 16, 3), nn.ReLU(), _conv_bn(16, 16, 3), nn.ReLU())
        self.mid = nn.Sequential(_conv_bn(16, 32, 3), nn.ReLU())
        self.dec = nn.Sequential(_conv_bn(48, 16, 3), nn.ReLU())
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        up = F.interpolate(self.mid(F.max_pool2d(skip, 2)), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.dec(torch.cat([up, skip], dim=1)))


def unet() -> Built:
    torch.manual_seed(0)
    return _with_data(_UNet(), _image())


# -- transformers ----------------------------------------------------------------------------------
class _LSTM(nn.Module):
    """A linear input projection, a one-layer LSTM and a linear head on the last hidden state."""

    def __init__(self, features: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.proj, self.lstm, self.head = nn.Linear(features, hidden), nn.LSTM(hidden, hidden, batch_first=True), nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(torch.relu(self.proj(x)))
        return self.head(out[:, -1])


def lstm() -> Built:
    torch.manual_seed(0)
    return _with_data(_LSTM(), (torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(1)),))


class _Shared(nn.Module):
    """One 3x3 conv (one weight) applied twice, with a ReLU between, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared, self.fc = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.fc(x.mean((2, 3)))


def shared() -> Built:
    torch.manual_seed(0)
    return _with_data(_Shared(), _image())


class _Detector(nn.Module):
    """A strided backbone and two heads over 3 anchors per cell: class logits [B, N, 4] and box
    regressions [B, N, 4], returned as a tuple."""

    def __init__(self, anchors: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.classes = classes
        self.backbone = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU(), _conv_bn(16, 32, 3, 2), nn.ReLU())
        self.cls, self.box = nn.Conv2d(32, anchors * classes, 3, padding=1), nn.Conv2d(32, anchors * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.classes)
        box = self.box(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)
        return cls, box


def detection() -> Built:
    torch.manual_seed(0)
    return _with_data(_Detector(), _image())


#: The zoo, by the name ``--model coverage/<name>`` takes.
COVERAGE_MODELS: dict[str, Callable[[], Built]] = {
    "resnet": resnet, "resnext": resnext, "mobilenetv2": mobilenetv2, "mobilenetv3": mobilenetv3,
    "efficientnet": efficientnet, "convnext": convnext, "unet": unet, "vit": vit, "swin": swin,
    "llama": llama, "lstm": lstm, "shared": shared, "detection": detection,
}
