"""Benchmarks whose numbers go into BENCHMARKS.md, each with its command, machine and date.

``bench_features``: build the feature cache of a dataset from cold and, in the same run, time
librosa per clip on the same files and settings (librosa is a dev dependency, imported here only).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from .progress import progress_bar

from . import fsutil
from .audio.io import prepare_waveform
from .config import Config
from .data.layouts import load_dataset
from .errors import AudiotagError
from .features.cache import build_features, compute_features, library_versions
from .features.bank import ClipBank
from .features.channels import PCEN, MFCC, Chroma, ConstantQ, FloorSubtracted, FrequencyPosition, InstantaneousFrequency
from .features.frontend import Deltas, FrontEnd, channel_names, mel_band_edges
from .augment import build_transforms
from .engine.precision import resolve_device, resolve_precision
from .engine.trainer import Trainer, lr_lambda
from .inference.predict import inference_spec, predict_model
from .models import new_model
from .training.batches import CropSampler
from .training.cv import crop_frames


PARITY_CLIPS = 300


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{model}, {cores} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def replace_section(path: Path, name: str, body: str, *, title: str) -> None:
    """Replace (or append) the block between ``<!-- bench:NAME -->`` markers in a Markdown file."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here comes from the command shown with it.\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    fsutil.write_text(path, text)


def bench_features(data: str | Path, *, config: Config | None = None, limit: int | None = None,
                   report: str | Path | None = None, progress: bool = True, command: str | None = None) -> dict:
    """Time a cold cache build against librosa per clip on the same files; optionally write the report."""
    import importlib.util

    if importlib.util.find_spec("librosa") is None:
        raise AudiotagError("the feature benchmark needs librosa as its reference",
                            hint="install the dev extras: pip install -e '.[dev]' (make bench does this)")
    config = config or Config()
    ds = load_dataset(data)
    if limit:
        ds.clips = ds.clips[:limit]
    a, f = config.audio, config.features
    if f.deltas or f.kind != "logmel" or f.channels != ["logmel"]:
        raise AudiotagError("the librosa comparison covers plain log-mel",
                            hint="drop features.deltas and extra channels here; `audiotag bench channels` times those")

    with tempfile.TemporaryDirectory(prefix="audiotag-bench-") as cache_dir:
        t0 = time.perf_counter()
        built = build_features(ds, config, cache_dir=cache_dir, progress=progress, skip_bad=True)
        ours_s = time.perf_counter() - t0
    # Imported after the build: workers forked from a process that loaded librosa (numba, LLVM) run slower.
    import librosa

    clips = built.dataset.clips
    paths = [c.path for c in clips]

    frontend = FrontEnd(a, f).eval()
    kwargs = dict(sr=a.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length, win_length=f.win_length, n_mels=f.n_mels,
                  fmin=f.fmin, fmax=f.fmax, power=f.power, htk=f.mel_scale == "htk",
                  norm=None if f.mel_norm == "none" else "slaney", center=True, pad_mode="constant")
    ref = np.max if f.db_reference == "max" else 1.0

    def librosa_logmel(y):
        return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kwargs), ref=ref, amin=f.amin, top_db=f.top_db)

    def decoded():
        for path in paths:
            t = time.perf_counter()
            y, sr = sf.read(str(path), dtype="float32", always_2d=True)
            y = prepare_waveform(y, sr, sample_rate=a.sample_rate, quality=a.resample_quality)
            yield y, time.perf_counter() - t

    # Separate passes: interleaving torch and librosa calls slows both (torch's idle OpenMP
    # threads spin while librosa runs).
    librosa_logmel(np.zeros(a.sample_rate, dtype=np.float32))  # numba compiles on first call: not timed
    decode_s = librosa_s = audio_s = 0.0
    for y, dt in progress_bar(decoded(), total=len(paths), desc="librosa per clip", enabled=progress, unit="file"):
        decode_s += dt
        audio_s += len(y) / a.sample_rate
        t = time.perf_counter()
        librosa_logmel(y)
        librosa_s += time.perf_counter() - t
    compute_features(np.zeros(a.sample_rate, dtype=np.float32), frontend)
    ours_compute_s = 0.0
    for y, _ in progress_bar(decoded(), total=len(paths), desc="audiotag per clip", enabled=progress, unit="file"):
        t = time.perf_counter()
        compute_features(y, frontend)
        ours_compute_s += time.perf_counter() - t
    worst_db = 0.0
    for (y, _), _ in zip(decoded(), range(PARITY_CLIPS)):
        expected = librosa_logmel(y)
        top = expected > expected.max() - 80
        worst_db = max(worst_db, float(np.abs(compute_features(y, frontend)[0] - expected)[top].max()))

    n = len(paths)
    result = {
        "clips": n, "audio_hours": audio_s / 3600,
        "ours_end_to_end_clips_per_s": n / ours_s,
        "librosa_end_to_end_clips_per_s": n / (decode_s + librosa_s),
        "ours_compute_clips_per_s": n / ours_compute_s,
        "librosa_compute_clips_per_s": n / librosa_s,
        "decode_clips_per_s": n / decode_s,
        "max_abs_db_difference": worst_db,
    }
    result["end_to_end_ratio"] = result["ours_end_to_end_clips_per_s"] / result["librosa_end_to_end_clips_per_s"]
    result["compute_ratio"] = result["ours_compute_clips_per_s"] / result["librosa_compute_clips_per_s"]
    result["build_vs_librosa_compute_ratio"] = result["ours_end_to_end_clips_per_s"] / result["librosa_compute_clips_per_s"]
    if report:
        _write_features_report(Path(report), result, config, command=command, librosa_version=librosa.__version__)
    return result


def _write_features_report(report: Path, r: dict, config: Config, *, command: str | None, librosa_version: str) -> None:
    a, f, n = config.audio, config.features, r["clips"]
    cmd = command or "audiotag " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    settings = (f"{a.sample_rate} Hz, n_fft {f.n_fft}, hop {f.hop_length}, {f.n_mels} mels, fmin {f.fmin:g}, "
                f"dB ref {f.db_reference}, top_db {f.top_db}, cache {f.cache_dtype}")
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items()) + f", librosa {librosa_version}"
    body = f"""
Command: `{cmd}` (`make bench` runs it on a `--scale small` benchmark)
Date: {_dt.date.today().isoformat()}; machine: {machine_description()}
Settings: {settings}; {versions}. `MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}`.

{n} clips, {r['audio_hours']:.2f} h of audio.

| audiotag | clips/s | librosa per clip | clips/s | ratio |
|---|---:|---|---:|---:|
| cold cache build: validation, hashing, decode, log-mel, cache write, worker start | {r['ours_end_to_end_clips_per_s']:.0f} | `feature.melspectrogram` + `power_to_db` | {r['librosa_compute_clips_per_s']:.0f} | **{r['build_vs_librosa_compute_ratio']:.1f}x** |
| same | {r['ours_end_to_end_clips_per_s']:.0f} | decode + `melspectrogram` + `power_to_db` | {r['librosa_end_to_end_clips_per_s']:.0f} | {r['end_to_end_ratio']:.1f}x |
| front-end only, one clip per call, one thread | {r['ours_compute_clips_per_s']:.0f} | `melspectrogram` + `power_to_db` | {r['librosa_compute_clips_per_s']:.0f} | {r['compute_ratio']:.1f}x |

audiotag builds the cache cold into a fresh folder with one worker process per core (one thread
each); librosa runs clip by clip in one process, the usual notebook loop, after a warm-up call so
numba's compile time is not counted, and in a separate pass from audiotag's front-end (interleaved,
torch's idle OpenMP threads slow librosa down). Decoding alone runs at {r['decode_clips_per_s']:.0f}
clips/s. Largest |ΔdB| against librosa over bins within 80 dB of each clip's maximum (first
{min(n, PARITY_CLIPS)} clips): {r['max_abs_db_difference']:.4f} dB.
"""
    replace_section(report, "features", body, title="Feature extraction (log-mel cache vs librosa)")


def _channel_modules(config: Config) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """The log-mel and, by channel name, the module that computes each extra channel."""
    a, f = config.audio, config.features
    logmel = FrontEnd(a, dataclasses.replace(f, deltas=False, channels=["logmel"])).logmel.eval()
    window = logmel.window
    modules = {
        "mfcc": MFCC(f.n_mels),
        "chroma": Chroma(sample_rate=a.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length, rows=f.n_mels, window=window),
        "cqt": ConstantQ(sample_rate=a.sample_rate, hop_length=f.hop_length, n_bins=f.n_mels, fmin=f.cqt_fmin,
                         bins_per_octave=f.cqt_bins_per_octave),
        "phase": InstantaneousFrequency(sample_rate=a.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                                        mel_weights=logmel.mel_t.numpy().T, window=window,
                                        band_edges_hz=mel_band_edges(sample_rate=a.sample_rate, n_mels=f.n_mels,
                                                                     fmin=f.fmin, fmax=f.fmax, htk=f.mel_scale == "htk")),
        "freqpos": FrequencyPosition(f.n_mels),
        "denoised": FloorSubtracted(),
        "pcen": PCEN(sample_rate=a.sample_rate, hop_length=f.hop_length),
        "deltas": Deltas(width=f.delta_width),
    }
    return logmel, modules


def bench_channels(data: str | Path, *, config: Config | None = None, limit: int | None = 200,
                   report: str | Path | None = None, progress: bool = True, command: str | None = None) -> dict:
    """Per-clip cost of every front-end channel against librosa's equivalent, on the same decoded
    clips in the same run (one clip per call, one process, separate passes per library)."""
    try:
        import librosa
    except ImportError:
        raise AudiotagError("the channel benchmark needs librosa as its reference",
                            hint="install the dev extras: pip install -e '.[dev]' (make bench does this)") from None
    config = config or Config()
    a, f = config.audio, config.features
    ds = load_dataset(data)
    clips = [c for c in ds.clips if c.path.exists()][: limit or None]
    waves = []
    for c in progress_bar(clips, desc="decoding", enabled=progress, unit="file"):
        y, sr = sf.read(str(c.path), dtype="float32", always_2d=True)
        waves.append(prepare_waveform(y, sr, sample_rate=a.sample_rate, quality=a.resample_quality))
    if not waves:
        raise AudiotagError(f"no readable clips in {data}")
    audio_s = sum(len(y) for y in waves) / a.sample_rate

    logmel, modules = _channel_modules(config)
    stft = dict(n_fft=f.n_fft, hop_length=f.hop_length, center=True, pad_mode="constant")
    mel_kwargs = dict(sr=a.sample_rate, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, **stft)

    def lib_logmel(y):
        return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **mel_kwargs), ref=np.max, top_db=f.top_db)

    # What each channel costs in librosa, starting from the waveform (mfcc and deltas from the
    # log-mel, as audiotag computes them; the log-mel itself is benchmarked by bench_features).
    reference = {
        "mfcc": ("`feature.mfcc(S=log-mel)`", lambda y, lm: librosa.feature.mfcc(S=lm, n_mfcc=f.n_mels)),
        "chroma": ("`feature.chroma_stft(tuning=0)`",
                   lambda y, lm: librosa.feature.chroma_stft(y=y, sr=a.sample_rate, tuning=0.0, **stft)),
        "cqt": ("`cqt` + `amplitude_to_db`", lambda y, lm: librosa.amplitude_to_db(np.abs(librosa.cqt(
            y, sr=a.sample_rate, hop_length=f.hop_length, fmin=f.cqt_fmin, n_bins=f.n_mels,
            bins_per_octave=f.cqt_bins_per_octave)), ref=np.max, top_db=f.top_db)),
        "phase": ("`reassigned_spectrogram` (frequencies)", lambda y, lm: librosa.reassigned_spectrogram(
            y, sr=a.sample_rate, reassign_times=False, **stft)[0]),
        "freqpos": ("none", None),
        "denoised": ("none", None),
        "pcen": ("`pcen(S=mel power)`", lambda y, lm: librosa.pcen(10.0 ** (lm / 10.0), sr=a.sample_rate,
                                                                   hop_length=f.hop_length)),
        "deltas": ("`feature.delta` order 1 and 2", lambda y, lm: (librosa.feature.delta(lm, width=f.delta_width),
                                                                   librosa.feature.delta(lm, width=f.delta_width, order=2))),
    }
    with torch.inference_mode():
        inputs = [logmel(torch.from_numpy(y)[None]) for y in waves]  # (1, 1, M, T) per clip
    lib_inputs = [lib_logmel(y) for y in waves]
    rows = {}
    import warnings
    for name, module in modules.items():
        label, fn = reference[name]
        lib_s = None
        if fn is not None:
            fn(waves[0], lib_inputs[0])  # numba compiles on first use: not timed
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                for y, lm in progress_bar(list(zip(waves, lib_inputs)), desc=f"librosa {name}", enabled=progress,
                                          unit="file"):
                    fn(y, lm)
                lib_s = time.perf_counter() - t
        on_logmel = name in ("mfcc", "freqpos", "deltas", "denoised", "pcen")
        with torch.inference_mode():
            t = time.perf_counter()
            for y, x in progress_bar(list(zip(waves, inputs)), desc=f"audiotag {name}", enabled=progress, unit="file"):
                module(x) if on_logmel else module(torch.from_numpy(y)[None])
            ours_s = time.perf_counter() - t
        rows[name] = {"librosa": label, "librosa_ms": None if lib_s is None else 1000 * lib_s / len(waves),
                      "ours_ms": 1000 * ours_s / len(waves)}
    result = {"clips": len(waves), "audio_seconds": audio_s, "channels": rows}
    if report:
        _write_channels_report(Path(report), result, config, command=command)
    return result


def _write_channels_report(report: Path, result: dict, config: Config, *, command: str | None) -> None:
    a, f, rows, audio_s = config.audio, config.features, result["channels"], result["audio_seconds"]
    n_clips = result["clips"]
    cmd = command or "audiotag " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    lines = ["| channel | audiotag ms/clip | librosa equivalent | librosa ms/clip | speed-up |", "|---|---:|---|---:|---:|"]
    for name, r in rows.items():
        lib = "—" if r["librosa_ms"] is None else f"{r['librosa_ms']:.2f}"
        ratio = "—" if r["librosa_ms"] is None else f"{r['librosa_ms'] / r['ours_ms']:.1f}x"
        lines.append(f"| {name} | {r['ours_ms']:.2f} | {r['librosa']} | {lib} | {ratio} |")
    body = f"""
Command: `{cmd}`
Date: {_dt.date.today().isoformat()}; machine: {machine_description()}
{n_clips} clips ({audio_s / n_clips:.1f} s on average), {a.sample_rate} Hz, n_fft {f.n_fft}, hop {f.hop_length},
{f.n_mels} bands; CQT from {f.cqt_fmin:g} Hz, {f.cqt_bins_per_octave} bins per octave.

{chr(10).join(lines)}

Each channel's time on top of the log-mel (mfcc and deltas read the log-mel in both libraries;
the others start from the waveform). One clip per call in one process, librosa after a warm-up
call, in separate passes. Parity is tested in `tests/test_channels.py`: MFCC, chroma and the
reassigned frequencies equal librosa's; the CQT peaks in the same bins and correlates > 0.9 with
`librosa.cqt` in dB on real clips (octave-group windows, not one filter per bin).
"""
    replace_section(report, "channels", body, title="Extra input channels vs librosa")


def bench_training(data: str | Path, *, config: Config | None = None, cache_dir: str | Path | None = None,
                   steps: int = 20, report: str | Path | None = None, command: str | None = None,
                   progress: bool = True) -> dict:
    """Training and inference throughput of the configured model on real cached features.

    Training: ``steps`` optimiser steps on crops of the curated clips (augmentation included).
    Inference: the test clips (or curated if none) through sliding windows, without and with TTA.
    """

    config = config or Config()
    ds = load_dataset(data)
    splits = tuple(s for s in ("curated", "test") if ds.split(s))
    features = build_features(ds, config, cache_dir=cache_dir, splits=splits, skip_bad=True, progress=progress)
    ds = features.dataset
    curated = ds.split("curated")
    train_bank = ClipBank.from_features(features, curated, ds.label_matrix(curated))
    device = resolve_device(config.train.device)
    torch.set_num_threads(config.train.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model = new_model(config, channels=train_bank.channels, bands=train_bank.bands, n_classes=len(ds.vocabulary),
                      device=device)
    example = torch.randn(config.train.batch_size, train_bank.channels, train_bank.bands, crop_frames(config))
    precision = resolve_precision(config.train.precision, device=device, model=model, example=example)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", total_steps=1, warmup_fraction=0))
    trainer = Trainer(model, optimizer=optimizer, scheduler=scheduler, device=device, precision=precision,
                      transforms=build_transforms(config.augment, seed=0, channels=channel_names(config.features)), grad_clip=config.train.grad_clip)
    sampler = CropSampler(train_bank, crop_frames=crop_frames(config), batch_size=config.train.batch_size, seed=0)
    batches = []
    epoch = 0
    while len(batches) < steps + 2:
        batches += list(sampler.epoch(epoch))
        epoch += 1
    trainer.train_epoch(batches[:2])  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    trainer.train_epoch(batches[2 : steps + 2])
    train_rate = steps * config.train.batch_size / (time.perf_counter() - start)

    clips = ds.split("test") or curated
    bank = ClipBank.from_features(features, clips)
    rates = {}
    for views in (0, config.predict.tta_views or 4):
        start = time.perf_counter()
        predict_model(model, bank, inference_spec(config, views=views), device=device, precision=precision)
        rates[views] = len(bank) / (time.perf_counter() - start)
    seconds_per_clip = float(np.mean(bank.lengths)) / (config.audio.sample_rate / config.features.hop_length)
    result = {"train_clips_per_s": train_rate, "precision": precision, "device": str(device),
              "inference_clips_per_s": rates[0], "tta_views": max(rates), "tta_clips_per_s": rates[max(rates)],
              "inference_clips": len(bank), "mean_clip_seconds": seconds_per_clip,
              "model": f"{config.model.name} width {config.model.width} depth {config.model.depth} "
                       f"convs {config.model.convs_per_block}",
              "input": f"{train_bank.channels}x{train_bank.bands}x{crop_frames(config)} crops, batch {config.train.batch_size}"}
    if report:
        cmd = command or "audiotag " + " ".join(shlex.quote(x) for x in sys.argv[1:])
        r = result
        body = f"""
Command: `{cmd}`
Date: {_dt.date.today().isoformat()}; machine: {machine_description()}

Model: {r['model']}; input {r['input']}; precision {r['precision']} (chosen by `train.precision=auto`) on {r['device']}.

| what | clips/s | ms per clip |
|---|---:|---:|
| training (forward + backward + step, augmentation included) | {r['train_clips_per_s']:.0f} | {1000 / r['train_clips_per_s']:.1f} |
| inference, sliding windows, no TTA | {r['inference_clips_per_s']:.0f} | {1000 / r['inference_clips_per_s']:.1f} |
| inference with {r['tta_views']} TTA views | {r['tta_clips_per_s']:.0f} | {1000 / r['tta_clips_per_s']:.1f} |

Inference rates are per whole clip ({r['inference_clips']} clips, {r['mean_clip_seconds']:.1f} s on average), one model;
a K-fold ensemble costs K times as much.
"""
        replace_section(Path(report), "training", body, title="Training and inference throughput")
    return result
