"""Models, chosen by name from a registry. Every model maps features ``(B, C, F, T)`` to
``{"logits": (B, n_classes)}`` and knows nothing of losses, augmentation or the training loop."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, ModelConfig
from ..errors import ConfigError
from .cnn import CRNN, MobileNetCNN, RecurrentTagger, ResNetCNN, VGGCNN, WaveCNN

MODELS: dict[str, type[nn.Module]] = {"vgg": VGGCNN, "resnet": ResNetCNN, "mobilenet": MobileNetCNN, "crnn": CRNN,
                                      "rnn": RecurrentTagger, "wavecnn": WaveCNN}


def build_model(cfg: ModelConfig, *, in_channels: int, n_mels: int, n_classes: int) -> nn.Module:
    try:
        cls = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"model.name = {cfg.name!r} is not a registered model",
                          hint=f"choose one of {', '.join(MODELS)}") from None
    shape = dict(in_channels=in_channels, n_mels=n_mels, n_classes=n_classes, dropout=cfg.dropout, pooling=cfg.pooling)
    recurrent = dict(cell=cfg.rnn_cell, hidden=cfg.rnn_hidden, layers=cfg.rnn_layers)
    if cls is RecurrentTagger:
        return cls(**shape, **recurrent)
    cnn = dict(width=cfg.width, depth=cfg.depth, convs_per_block=cfg.convs_per_block, max_width=cfg.max_width)
    if cls is not WaveCNN:
        cnn["band_context_blocks"] = cfg.band_context_blocks
    if cls is MobileNetCNN:
        cnn["downsample"] = cfg.downsample
    if cls is CRNN:
        return cls(**shape, **cnn, recurrent=recurrent)
    return cls(**shape, **cnn)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_model(config: Config, *, channels: int, bands: int, n_classes: int, device: torch.device) -> nn.Module:
    """The configured model for inputs ``(B, channels, bands, T)``, laid out and placed as training wants it."""
    model = build_model(config.model, in_channels=channels, n_mels=bands, n_classes=n_classes)
    if config.train.channels_last and hasattr(model, "use_channels_last"):
        model = model.use_channels_last()
    return model.to(device)
