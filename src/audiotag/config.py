"""Configuration as validated data.

One typed tree of dataclasses holds every setting. It is built from the defaults, then a YAML
file (which may hold only the keys it changes), then ``--set key=value`` overrides, and it is
saved, resolved, into every run. Unknown keys, wrong types and out-of-range values are errors
that name the key and, for a misspelt key, suggest the closest valid one. YAML is read with
``safe_load``: a config is data, never code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


MAX_SEED = 2**31 - 1  # seeds are combined (seed * 1000 + stream) and must stay within numpy's and torch's


def _range(lo=None, hi=None, *, lo_open=False):
    return {"min": lo, "max": hi, "lo_open": lo_open}


@dataclass
class AudioConfig:
    """How a file becomes a mono waveform at a fixed rate."""

    sample_rate: int = field(default=16000, metadata=_range(1000, 384000))
    resample_quality: Literal["VHQ", "HQ", "MQ", "LQ", "QQ"] = "HQ"
    # Leading/trailing silence quieter than `trim_top_db` below the clip's peak is cut.
    trim_silence: bool = False
    trim_top_db: float = field(default=60.0, metadata=_range(0.0, 200.0, lo_open=True))


@dataclass
class FeatureConfig:
    """The front-end: what is computed from a waveform and cached."""

    # logmel: spectral channels (the log-mel first, then `channels`); waveform: the raw samples,
    # framed as (1, hop_length, frames) so crops and batches work alike (for the wavecnn model).
    kind: Literal["logmel", "waveform"] = "logmel"
    n_fft: int = field(default=1024, metadata=_range(16, 65536))
    hop_length: int = field(default=320, metadata=_range(1, 65536))
    win_length: int | None = field(default=None, metadata=_range(1, 65536))
    n_mels: int = field(default=64, metadata=_range(1, 1024))
    fmin: float = field(default=20.0, metadata=_range(0.0))
    fmax: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    power: float = field(default=2.0, metadata=_range(0.0, 4.0, lo_open=True))
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney", "none"] = "slaney"
    # "max": 0 dB at each clip's loudest bin (librosa's ref=np.max); "absolute": ref = 1.0.
    db_reference: Literal["max", "absolute"] = "max"
    top_db: float | None = field(default=80.0, metadata=_range(0.0, lo_open=True))
    amin: float = field(default=1e-10, metadata=_range(0.0, 1.0, lo_open=True))
    # Delta and delta-delta channels right after the log-mel (librosa.feature.delta, width frames).
    deltas: bool = False
    delta_width: int = field(default=9, metadata=_range(3, 99))
    # The input channels, stacked in this order, each n_mels high: logmel, mfcc, chroma, cqt
    # (constant-Q dB), phase (instantaneous frequency within each mel band), freqpos (band position),
    # denoised (log-mel minus each band's noise floor), pcen (per-channel energy normalisation).
    channels: list[Literal["logmel", "mfcc", "chroma", "cqt", "phase", "freqpos", "denoised", "pcen"]] = field(
        default_factory=lambda: ["logmel"])
    cqt_fmin: float = field(default=30.0, metadata=_range(1.0))  # Hz of the lowest CQT bin (n_mels bins)
    cqt_bins_per_octave: int = field(default=8, metadata=_range(1, 96))
    cache_dtype: Literal["float16", "float32"] = "float16"


@dataclass
class DataConfig:
    """How datasets are read and validated."""

    skip_bad: bool = False  # leave out clips that fail validation (listed in the run) instead of stopping
    num_workers: int = field(default=0, metadata=_range(0, 256))  # decoding/feature processes; 0 = one per core


@dataclass
class ModelConfig:
    """The network: a registry name and the knobs every architecture shares."""

    # vgg, resnet, mobilenet (inverted residuals): log-mel CNNs; crnn: CNN blocks then a recurrent
    # layer over time; rnn: recurrent layers over log-mel frames; wavecnn: raw-waveform 1D CNN stem
    # then CNN blocks (EnvNet-v2-like, needs features.kind=waveform).
    name: Literal["vgg", "resnet", "mobilenet", "crnn", "rnn", "wavecnn"] = "mobilenet"
    width: int = field(default=32, metadata=_range(4, 1024))  # channels of the first block, doubled per block
    depth: int = field(default=4, metadata=_range(1, 8))  # blocks, each halving time and frequency
    convs_per_block: int = field(default=1, metadata=_range(1, 4))
    max_width: int = field(default=512, metadata=_range(4, 4096))
    # vgg/resnet/mobilenet/crnn: blocks after the first N see one band at a time (1x3 kernels, CP-ResNet); null = all 3x3
    band_context_blocks: int | None = field(default=None, metadata=_range(0, 8))
    # mobilenet: halve time and frequency by 2x2 pooling after each block, or early (a stride-2 stem, pooling before projections)
    downsample: Literal["pool", "early"] = "pool"
    dropout: float = field(default=0.2, metadata=_range(0.0, 0.95))
    # How frames become a clip: avgmax (mean + max over time) or attention (per-class, on frame logits).
    pooling: Literal["avgmax", "attention"] = "avgmax"
    rnn_cell: Literal["gru", "lstm"] = "gru"  # crnn and rnn
    rnn_hidden: int = field(default=128, metadata=_range(4, 4096))  # per direction (bidirectional)
    rnn_layers: int = field(default=2, metadata=_range(1, 8))


@dataclass
class TrainConfig:
    """The optimisation loop and cross-validation."""

    folds: int = field(default=5, metadata=_range(2, 50))
    only_folds: list[int] | None = None  # train only these fold indices (0-based; null = all): fold-parallel jobs
    use_dataset_folds: bool = True  # ESC-50 / UrbanSound8K folds when the dataset has them
    # The fold split's seed (null = seed): a seed ensemble keeps it, so its runs share folds for nested CV.
    fold_seed: int | None = field(default=None, metadata=_range(0, MAX_SEED))
    epochs: int = field(default=300, metadata=_range(1, 10000))
    batch_size: int = field(default=32, metadata=_range(1, 4096))
    crop_seconds: float = field(default=3.0, metadata=_range(0.1, 600.0))
    crop_energy: float = field(default=1.0, metadata=_range(0.0, 4.0))  # crop starts weighted by power ** this
    pad_mode: Literal["wrap", "constant"] = "wrap"
    balanced_sampling: bool = False
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = field(default=3e-3, metadata=_range(0.0, 10.0, lo_open=True))
    weight_decay: float = field(default=1e-2, metadata=_range(0.0, 1.0))
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9))
    grad_clip: float | None = field(default=5.0, metadata=_range(0.0, lo_open=True))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    early_stopping_patience: int = field(default=0, metadata=_range(0))  # validations without improvement; 0 = off
    checkpoint: Literal["best", "last"] = "best"  # which weights predict
    validate_every: int = field(default=5, metadata=_range(1, 10000))  # epochs; the last epoch always validates
    # Validate and keep a moving average of the weights, updated every step; 0 = off, 0.999 ~ 1,000 steps
    ema_decay: float = field(default=0.0, metadata=_range(0.0, 0.99999))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = field(default=0, metadata=_range(0, 512))  # torch threads; 0 = one per core


@dataclass
class AugmentConfig:
    """Training-time augmentation; each part is off when its strength is 0."""

    mixup_alpha: float = field(default=1.0, metadata=_range(0.0))
    mixup_prob: float = field(default=0.5, metadata=_range(0.0, 1.0))
    mixup_targets: Literal["weighted", "or"] = "or"
    # "power": mix dB channels as powers, i.e. sounds playing at once (others linearly); "db": as they are.
    mixup_domain: Literal["db", "power"] = "power"
    mixup_sources: int = field(default=2, metadata=_range(2, 8))  # up to this many clips; each partner joins at mixup_prob
    time_masks: int = field(default=2, metadata=_range(0, 20))
    time_mask_frames: int = field(default=20, metadata=_range(0))
    freq_masks: int = field(default=2, metadata=_range(0, 20))
    freq_mask_bins: int = field(default=8, metadata=_range(0))
    gain_db: float = field(default=6.0, metadata=_range(0.0, 60.0))  # random gain in +-dB
    eq_db: float = field(default=0.0, metadata=_range(0.0, 60.0))  # random smooth EQ curve, about +-dB
    freq_shift_bins: int = field(default=0, metadata=_range(0, 64))  # random shift along the bands
    time_stretch: float = field(default=0.0, metadata=_range(0.0, 1.0))  # tempo change up to x(1 +- this)
    time_shift: bool = True  # circular shift of each crop
    resized_crop_min: float = field(default=0.8, metadata=_range(0.1, 1.0))  # zoom into this share (to 1) per axis
    resized_crop_max: float = field(default=1.25, metadata=_range(1.0, 2.0))  # > 1: zoom out too, up to this
    resized_crop_prob: float = field(default=0.33, metadata=_range(0.0, 1.0))  # share of crops zoomed into
    resized_crop_axes: Literal["both", "time", "bands"] = "both"  # or along one axis alone
    freq_mixstyle_prob: float = field(default=0.0, metadata=_range(0.0, 1.0))  # frequency-wise MixStyle
    freq_mixstyle_alpha: float = field(default=0.3, metadata=_range(0.0))
    specmix_prob: float = field(default=0.0, metadata=_range(0.0, 1.0))  # share of crops given another's bands


@dataclass
class PredictConfig:
    """Clip-level inference: sliding windows, test-time augmentation, fold averaging."""

    window_seconds: float | None = field(default=None, metadata=_range(0.1, 600.0))  # null = train.crop_seconds
    overlap: float = field(default=0.5, metadata=_range(0.0, 0.95))
    aggregate: Literal["mean", "max"] = "max"
    tta_views: int = field(default=2, metadata=_range(0, 64))
    tta_beta: float = field(default=0.4, metadata=_range(0.0, 1.0))  # weight of the clean view
    fold_mean: Literal["arithmetic", "geometric"] = "arithmetic"
    batch_size: int = field(default=64, metadata=_range(1, 65536))


@dataclass
class NoisyConfig:
    """How the noisily-labelled set (``train_noisy``) is used; ``none`` trains on curated clips only."""

    # joint: curated + noisy clips in every batch; pretrain: train on noisy clips once, then fine-tune
    # each fold on curated; pseudo: noisy clips relabelled or selected by a curated-only teacher run;
    # mixmatch: noisy clips as unlabelled data (MixMatch).
    strategy: Literal["none", "joint", "pretrain", "pseudo", "mixmatch"] = "none"
    batch_fraction: float = field(default=0.5, metadata=_range(0.0, 0.95))  # share of each batch from noisy clips
    weight: float = field(default=0.5, metadata=_range(0.0, 10.0))  # loss weight of a noisy row (curated = 1)
    # The loss of noisy rows (curated rows keep BCE): bce | smooth (label smoothing) | bootstrap (soft
    # bootstrapping) | lq (generalised cross-entropy) | drop (leave out the highest-loss noisy rows).
    loss: Literal["bce", "smooth", "bootstrap", "lq", "drop"] = "bce"
    smoothing: float = field(default=0.1, metadata=_range(0.0, 1.0))
    bootstrap_beta: float = field(default=0.8, metadata=_range(0.0, 1.0))
    lq_q: float = field(default=0.7, metadata=_range(0.0, 1.0, lo_open=True))
    drop_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9))
    max_clips: int | None = field(default=None, metadata=_range(1))  # use at most this many noisy clips
    # pretrain: epochs on the noisy set (shared by all folds), then train.epochs at train.lr * finetune_lr_scale
    pretrain_epochs: int = field(default=30, metadata=_range(1, 10000))
    finetune_lr_scale: float = field(default=0.5, metadata=_range(0.0, 10.0, lo_open=True))
    teacher: str | None = None  # pseudo: a finished curated-only run whose fold models never saw the noisy clips
    # keep: agree (teacher's probability of a given label >= threshold; keeps only those labels),
    # relabel (labels = teacher's probabilities >= threshold), soft (targets = blend of given labels
    # and teacher's probabilities, every clip kept)
    pseudo_rule: Literal["agree", "relabel", "soft"] = "agree"
    pseudo_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))
    soft_alpha: float = field(default=0.5, metadata=_range(0.0, 1.0))  # soft: weight of the given labels
    # mixmatch: augmented views per unlabelled crop, sharpening temperature, Beta(alpha, alpha)
    # mixup, weight of the unlabelled loss and the epochs over which it ramps up from 0.
    mixmatch_k: int = field(default=2, metadata=_range(1, 16))
    mixmatch_temperature: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    mixmatch_alpha: float = field(default=0.75, metadata=_range(0.0))
    mixmatch_weight: float = field(default=1.0, metadata=_range(0.0, 1000.0))
    mixmatch_ramp_epochs: int = field(default=10, metadata=_range(0, 10000))
    # Test clips as extra noisy rows, from a Kaggle-format CSV of earlier predictions (a run's
    # test_predictions.csv, an ensemble's submission): targets = the labels predicted at >=
    # test_threshold (clips with none left out), soft = the probabilities themselves, every clip
    # (distilling whatever made them), or standardized = those standardised per label over the
    # test clips, as a submission's are. Their recordings then take part in training.
    test_predictions: str | None = None
    test_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    test_targets: Literal["labels", "soft", "standardized"] = "labels"
    test_batch_fraction: float | None = field(default=None, metadata=_range(0.0, 0.95, lo_open=True))  # own batch share


@dataclass
class Config:
    seed: int = field(default=0, metadata=_range(0, MAX_SEED))
    audio: AudioConfig = field(default_factory=AudioConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    noisy: NoisyConfig = field(default_factory=NoisyConfig)

    def validate(self) -> "Config":
        _check_cross_fields(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def cqt_top_hz(n_bins: int, fmin: float, bins_per_octave: int) -> float:
    """Upper edge of a constant-Q transform's highest band (centre + half its bandwidth): a valid
    config keeps it below Nyquist, and the CQT channel decimates by it."""
    q = 1.0 / (2.0 ** (1.0 / bins_per_octave) - 1)
    return fmin * 2.0 ** ((n_bins - 1) / bins_per_octave) * (1 + 0.5 / q)


def _check_cross_fields(cfg: Config) -> None:
    f, a = cfg.features, cfg.audio
    nyquist = a.sample_rate / 2
    if f.fmax is not None and f.fmax > nyquist:
        raise ConfigError(
            f"features.fmax = {f.fmax} is above the Nyquist frequency {nyquist:g} Hz of audio.sample_rate = {a.sample_rate}",
            hint=f"set features.fmax to at most {nyquist:g}, or null for sample_rate / 2",
        )
    top = f.fmax if f.fmax is not None else nyquist
    if f.fmin >= top:
        raise ConfigError(f"features.fmin = {f.fmin} must be below fmax ({top:g} Hz)")
    if f.win_length is not None and f.win_length > f.n_fft:
        raise ConfigError(f"features.win_length = {f.win_length} must not exceed features.n_fft = {f.n_fft}")
    if f.n_mels > f.n_fft // 2 + 1:
        raise ConfigError(
            f"features.n_mels = {f.n_mels} exceeds the {f.n_fft // 2 + 1} frequency bins of n_fft = {f.n_fft}",
            hint="raise features.n_fft or lower features.n_mels",
        )
    if f.delta_width % 2 == 0:
        raise ConfigError(f"features.delta_width = {f.delta_width} must be odd")
    if len(set(f.channels)) != len(f.channels):
        raise ConfigError(f"features.channels = {f.channels} lists a channel twice")
    if f.kind == "logmel" and not f.channels:
        raise ConfigError("features.channels is empty", hint="e.g. features.channels=[logmel]")
    if f.deltas and "logmel" not in f.channels:
        raise ConfigError("features.deltas = true needs logmel in features.channels (they are its deltas)")
    if f.kind == "waveform" and (f.channels != ["logmel"] or f.deltas):
        raise ConfigError("features.kind = waveform takes no spectral channels or deltas",
                          hint="leave features.channels and features.deltas at their defaults, or use features.kind=logmel")
    if "cqt" in f.channels:
        top_hz = cqt_top_hz(f.n_mels, f.cqt_fmin, f.cqt_bins_per_octave)
        if top_hz > nyquist:
            raise ConfigError(
                f"the CQT's {f.n_mels} bins from features.cqt_fmin = {f.cqt_fmin:g} Hz at "
                f"{f.cqt_bins_per_octave} per octave reach {top_hz:.0f} Hz, above the {nyquist:g} Hz Nyquist limit",
                hint="narrow the span: raise features.cqt_bins_per_octave, or lower cqt_fmin or n_mels")
    wave_models, spectral_models = {"wavecnn"}, set(typing.get_args(typing.get_type_hints(ModelConfig)["name"])) - {"wavecnn"}
    if (f.kind == "waveform") != (cfg.model.name in wave_models):
        raise ConfigError(
            f"model.name = {cfg.model.name} does not read features.kind = {f.kind}",
            hint="raw waveforms go with model.name=wavecnn; spectral features with "
                 + ", ".join(sorted(spectral_models)))
    m = cfg.model
    if m.band_context_blocks is not None and (m.name in ("rnn", "wavecnn") or m.band_context_blocks > m.depth):
        raise ConfigError(f"model.band_context_blocks = {m.band_context_blocks} needs model.name vgg, resnet or crnn "
                          f"and at most model.depth = {m.depth} blocks (model.name = {m.name})",
                          hint="lower it, or leave it null for 3x3 kernels in every block")
    if m.downsample == "early" and (m.name != "mobilenet" or m.band_context_blocks == 0):
        raise ConfigError(f"model.downsample = early needs model.name mobilenet (model.name = {m.name}) and a 3x3 stem "
                          f"(model.band_context_blocks >= 1): a 1x3 kernel striding over bands would drop every other band",
                          hint="set model.downsample=pool, or model.name=mobilenet and model.band_context_blocks=null")
    n = cfg.noisy
    if n.strategy == "pseudo" and not n.teacher:
        raise ConfigError("noisy.strategy = pseudo needs noisy.teacher: a finished curated-only run folder",
                          hint="train one first (audiotag train --data DATA --out runs/teacher), then "
                               "--set noisy.teacher=runs/teacher")
    if n.test_predictions and n.strategy == "mixmatch":
        raise ConfigError("noisy.test_predictions (pseudo-labelled test clips) cannot be combined with "
                          "noisy.strategy = mixmatch, which treats every noisy row as unlabelled",
                          hint="use noisy.strategy=joint (or none), or leave out noisy.test_predictions")
    if n.test_batch_fraction is not None:
        if not n.test_predictions:
            raise ConfigError("noisy.test_batch_fraction is set but there are no pseudo-labelled test clips",
                              hint="give noisy.test_predictions too, or leave out noisy.test_batch_fraction")
        noisy_share = n.batch_fraction if n.strategy in ("joint", "pseudo") else 0.0
        if noisy_share + n.test_batch_fraction > 0.95:
            raise ConfigError(f"noisy.batch_fraction ({noisy_share:g}) + noisy.test_batch_fraction "
                              f"({n.test_batch_fraction:g}) leave less than 5% of each batch to curated clips",
                              hint="lower one of them (e.g. 0.3 + 0.2 keeps half of each batch curated)")
    t = cfg.train
    if t.only_folds is not None:
        bad = [k for k in t.only_folds if not 0 <= k < t.folds]
        if bad or not t.only_folds:
            raise ConfigError(f"train.only_folds = {t.only_folds} must list fold indices from 0 to {t.folds - 1}")


# --------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_type_name(t) for t in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} = {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} = {value!r} is not null")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(v) for v in typing.get_args(tp)], n=1)
        raise ConfigError(f"{key} = {value!r} is not one of {_type_name(tp)}",
                          hint=f"did you mean {close[0]!r}?" if close else None)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} must be a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} = {value!r} must be an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key} = {value!r} must be a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key} = {value!r} must be a finite number", hint="NaN and infinity are never a setting")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} = {value!r} must be a string")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None or not meta or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        rel = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{key} = {value!r} is out of range: must be {rel} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r} is out of range: must be <= {hi}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
            raise ConfigError(
                f"unknown config key {key!r}",
                hint=(f"did you mean {(prefix + '.' if prefix else '') + close[0]!r}? " if close else "")
                + f"valid keys here: {', '.join(fields)}",
            )
        kwargs[name] = _coerce(value, hints[name], key)
        _check_range(kwargs[name], fields[name].metadata, key)
    return cls(**kwargs)


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """``"features.n_mels=128"`` -> ``{"features": {"n_mels": 128}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value", hint="e.g. --set features.n_mels=128")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    node = out = {}
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides; validated."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    return config_from_dict(data)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data).validate()
