"""Log-mel CNNs trained from scratch, as FAT2019's top teams used them.

The CNNs share the input normalisation (a BatchNorm per channel and mel band, PANNs' ``bn0``) and
the head (mean over frequency, then average + max over time and a two-layer classifier, or
per-class attention over time), and differ only in their blocks: plain stacks of 3x3 conv-BN-ReLU
(VGG), residual pairs (ResNet) or inverted residuals with depthwise convolutions (MobileNetV2).
Every block halves time and frequency with 2x2 average pooling and doubles the width up to
``max_width``. The CRNN adds a recurrent layer before the head; the recurrent tagger and the
raw-waveform CNN are other families, for ensembles.
"""

from __future__ import annotations

import torch
from torch import nn


FULL, TIME_ONLY = (3, 3), (1, 3)  # (bands, frames) kernels: 3x3, or 1x3 that never widens the band context


def _conv(cin: int, cout: int, kernel: tuple[int, int], stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel[0] // 2, kernel[1] // 2), groups=groups,
                     bias=False)


def _conv_bn_relu(cin: int, cout: int, kernel: tuple[int, int] = FULL, stride: int = 1) -> list[nn.Module]:
    return [_conv(cin, cout, kernel, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, convs: int, kernel: tuple[int, int] = FULL):
        layers = []
        for i in range(convs):
            layers += _conv_bn_relu(cin if i == 0 else cout, cout, kernel)
        super().__init__(*layers, nn.AvgPool2d(2, ceil_mode=True))


class ResidualBlock(nn.Module):
    """``convs`` (>= 1) pairs of convolutions (3x3, or ``kernel``) with identity shortcuts, then 2x2 pooling."""

    def __init__(self, cin: int, cout: int, *, convs: int, kernel: tuple[int, int] = FULL):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else nn.Identity()
        self.pairs = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(cout, cout, kernel), _conv(cout, cout, kernel), nn.BatchNorm2d(cout))
            for _ in range(convs))
        for pair in self.pairs:  # start each residual branch at zero: the block begins as identity
            nn.init.zeros_(pair[-1].weight)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        for pair in self.pairs:
            x = self.relu(x + pair(x))
        return self.pool(x)


class InvertedResidualBlock(nn.Module):
    """``convs`` (>= 1) MobileNetV2 units, then 2x2 pooling. A unit expands its input 4x with a 1x1
    convolution, filters each expanded channel alone (depthwise 3x3, or ``kernel``) and projects back
    with a 1x1; units that keep the width add their input (identity shortcut). The block that reads
    the raw feature channels (``stem``) has a full convolution as its first unit (MobileNets' stem):
    expanding one to three channels would give the depthwise filters nothing to mix.
    ``early``: halve time and frequency as early as is cheap instead of pooling at the block's end:
    the stem convolution strides by 2 and the first unit pools before its projection (a 1x1
    convolution commutes with average pooling, so only its batch norm's statistics change). A
    stride-2 depthwise convolution, as ImageNet MobileNets downsample, is not used: its backward pass
    took 2-9x as long in oneDNN (bf16, CPU) as the unstrided one on the same input."""

    EXPANSION = 4

    def __init__(self, cin: int, cout: int, *, convs: int, kernel: tuple[int, int] = FULL, stem: bool = False,
                 early: bool = False):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(cin, cout, kernel, 2 if early else 1)) if stem else nn.Identity()
        units, self.residual = [], []
        for i in range(convs - 1 if stem else convs):
            c_in = cout if stem or i > 0 else cin
            hidden = self.EXPANSION * c_in
            halves = early and i == 0 and not stem
            units.append(nn.Sequential(
                nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                _conv(hidden, hidden, kernel, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                *([nn.AvgPool2d(2, ceil_mode=True)] if halves else []),
                nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)))
            self.residual.append(c_in == cout and not halves)
        self.units = nn.ModuleList(units)
        for unit, residual in zip(self.units, self.residual):
            if residual:  # start each residual branch at zero, as in the ResNet blocks
                nn.init.zeros_(unit[-1].weight)
        self.pool = nn.Identity() if early else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit, residual in zip(self.units, self.residual):
            x = x + unit(x) if residual else unit(x)
        return self.pool(x)


def avg_max_pool(frames: torch.Tensor) -> torch.Tensor:
    """``(B, D, T)`` -> ``(B, D)``: mean plus maximum over time."""
    return frames.mean(dim=2) + frames.amax(dim=2)


def mlp_head(dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(dim, n_classes))


class AttentionHead(nn.Module):
    """``(B, D, T)`` frame embeddings -> ``(B, K)`` clip logits: each class weighs the frames with its
    own softmax over time and takes the weighted mean of its frame logits (PANNs' decision-level
    attention, kept in logits so the loss stays BCE-with-logits)."""

    def __init__(self, dim: int, n_classes: int, dropout: float):
        super().__init__()
        self.hidden = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(dim, dim, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.attention = nn.Conv1d(dim, n_classes, 1)
        self.classifier = nn.Conv1d(dim, n_classes, 1)

    def frame_weights(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attention(self.hidden(frames)), dim=2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(frames)
        weights = torch.softmax(self.attention(hidden), dim=2)
        return (weights * self.classifier(hidden)).sum(dim=2)


class Recurrent(nn.Module):
    """``(B, D, T)`` -> ``(B, 2H, T)``: a bidirectional GRU or LSTM over time."""

    def __init__(self, dim: int, *, cell: str = "gru", hidden: int = 128, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.out_dim = 2 * hidden

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(frames.transpose(1, 2))
        return out.transpose(1, 2)


class _AudioCNN(nn.Module):
    block: type[nn.Module]

    def __init__(self, *, in_channels: int, n_mels: int, n_classes: int, width: int = 32, depth: int = 4,
                 convs_per_block: int = 2, max_width: int = 512, dropout: float = 0.2, pooling: str = "avgmax",
                 recurrent: dict | None = None, band_context_blocks: int | None = None):
        super().__init__()
        self.input_norm = nn.BatchNorm1d(in_channels * n_mels)
        self.channels_last = False
        widths = [min(width * 2**i, max_width) for i in range(depth)]
        blocks, cin = [], in_channels
        for i, cout in enumerate(widths):
            kernel = FULL if band_context_blocks is None or i < band_context_blocks else TIME_ONLY
            blocks.append(self.make_block(i, cin, cout, convs=convs_per_block, kernel=kernel))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.recurrent = Recurrent(cin, **recurrent) if recurrent else None
        dim = self.recurrent.out_dim if self.recurrent else cin
        self.pooling = pooling
        self.head = AttentionHead(dim, n_classes, dropout) if pooling == "attention" else mlp_head(dim, n_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def make_block(self, index: int, cin: int, cout: int, **kw) -> nn.Module:
        return self.block(cin, cout, **kw)

    def use_channels_last(self) -> "_AudioCNN":
        """Store convolutions NHWC: oneDNN's faster layout on CPUs (a 64-clip training step of the
        default model: 0.47 s instead of 0.67 s in fp32 on this project's 2-core Xeon)."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` features -> ``(B, D, T')`` frame embeddings (frequency averaged out)."""
        b, c, f, t = x.shape
        x = self.input_norm(x.reshape(b, c * f, t)).reshape(b, c, f, t)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.blocks(x).mean(dim=2)
        return self.recurrent(x) if self.recurrent is not None else x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = self.frames(x)
        return {"logits": self.head(frames if self.pooling == "attention" else avg_max_pool(frames))}


class VGGCNN(_AudioCNN):
    block = VGGBlock


class ResNetCNN(_AudioCNN):
    block = ResidualBlock


class MobileNetCNN(_AudioCNN):
    """Inverted residual blocks (MobileNetV2, as EfficientAT scales them down for audio tagging):
    most of the arithmetic goes to 1x1 convolutions, the matrix products CPUs run best."""

    block = InvertedResidualBlock

    def __init__(self, *, downsample: str = "pool", **kw):
        self.early = downsample == "early"  # read by make_block, which the base class calls
        super().__init__(**kw)

    def make_block(self, index: int, cin: int, cout: int, **kw) -> nn.Module:
        return self.block(cin, cout, stem=index == 0, early=self.early, **kw)


class CRNN(VGGCNN):
    """VGG blocks, then a bidirectional recurrent layer over the frames (5th place of FAT2019's
    CNN + GRU): the convolutions hear local patterns, the recurrence their order in time."""


class RecurrentTagger(nn.Module):
    """Log-mel frames straight into stacked bidirectional GRU/LSTM layers, then the clip head: no
    convolutions, so its mistakes differ from the CNNs' (an ensemble member, not a leader)."""

    def __init__(self, *, in_channels: int, n_mels: int, n_classes: int, cell: str = "gru", hidden: int = 128,
                 layers: int = 2, dropout: float = 0.2, pooling: str = "avgmax"):
        super().__init__()
        self.input_norm = nn.BatchNorm1d(in_channels * n_mels)
        self.recurrent = Recurrent(in_channels * n_mels, cell=cell, hidden=hidden, layers=layers, dropout=dropout)
        self.pooling = pooling
        dim = self.recurrent.out_dim
        self.head = AttentionHead(dim, n_classes, dropout) if pooling == "attention" else mlp_head(dim, n_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c, f, t = x.shape
        frames = self.recurrent(self.input_norm(x.reshape(b, c * f, t)))
        return {"logits": self.head(frames if self.pooling == "attention" else avg_max_pool(frames))}


class WaveCNN(nn.Module):
    """Raw waveform in, EnvNet-v2 style: two strided 1D convolutions and a max-pool turn each hop of
    samples into one frame of ``STEM`` learnt filter outputs; that (filters x frames) map is then
    read as a one-channel image by the VGG blocks. Input: framed waveform ``(B, 1, hop, T)``."""

    STEM = 64

    def __init__(self, *, in_channels: int, n_mels: int, n_classes: int, width: int = 32, depth: int = 4,
                 convs_per_block: int = 1, max_width: int = 512, dropout: float = 0.2, pooling: str = "avgmax"):
        super().__init__()
        hop = n_mels  # the framed waveform's "bands" are the samples of one hop
        if in_channels != 1 or hop % 16:
            raise ValueError(f"wavecnn reads a mono framed waveform with hop_length divisible by 16, got "
                             f"{in_channels} channels x {hop} samples per frame")
        s = self.STEM
        self.stem = nn.Sequential(
            nn.Conv1d(1, s // 2, 64, stride=4, padding=30, bias=False), nn.BatchNorm1d(s // 2), nn.ReLU(inplace=True),
            nn.Conv1d(s // 2, s, 16, stride=4, padding=6, bias=False), nn.BatchNorm1d(s), nn.ReLU(inplace=True),
            nn.MaxPool1d(hop // 16, ceil_mode=True))
        self.backbone = VGGCNN(in_channels=1, n_mels=s, n_classes=n_classes, width=width, depth=depth,
                               convs_per_block=convs_per_block, max_width=max_width, dropout=dropout, pooling=pooling)

    def use_channels_last(self) -> "WaveCNN":
        self.backbone.use_channels_last()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, hop, t = x.shape
        waveform = x.transpose(2, 3).reshape(b, 1, t * hop)
        filters = self.stem(waveform)[:, :, :t]  # (B, STEM, T): one column per frame
        return self.backbone(filters[:, None])
