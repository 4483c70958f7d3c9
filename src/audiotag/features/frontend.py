"""Feature front-ends as ``nn.Module``s: waveform ``(B, N)`` -> features ``(B, C, F, T)``.

They reproduce librosa's definitions (``feature.melspectrogram`` + ``power_to_db``,
``feature.delta``) and are tested against it, but run batched in torch. On a 2-core CPU most of a
log-mel's time is the FFT and the mel matrix product, so the product is computed band by band: a
mel filter only touches the FFT bins between its neighbours' centres, and grouping filters into
bands skips most of a dense product's zeros. The real and imaginary parts are squared in place and
the mel weights are repeated for both, so the power sum happens inside the matrix product. On the
CPU the band products go through numpy (OpenBLAS), whose kernels for narrow products are faster
than torch's MKL ones (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import mkl
from ..config import AudioConfig, FeatureConfig
from .channels import PCEN, MFCC, Chroma, ConstantQ, FloorSubtracted, FrequencyPosition, InstantaneousFrequency


# ----------------------------------------------------------------------------- mel scale


def hz_to_mel(hz: np.ndarray | float, *, htk: bool = False) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney's Auditory Toolbox: linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def mel_to_hz(mel: np.ndarray | float, *, htk: bool = False) -> np.ndarray:
    mel = np.asanyarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False, norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters ``[shape=(n_mels, 1 + n_fft // 2)]``, float32, as ``librosa.filters.mel``."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_hz = mel_band_edges(sample_rate=sample_rate, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_band_edges(*, sample_rate: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies (Hz) of the triangular filters: filter m spans
    edges m .. m + 2 and peaks at m + 1."""
    fmax = sample_rate / 2 if fmax is None else fmax
    return mel_to_hz(np.linspace(hz_to_mel(fmin, htk=htk), hz_to_mel(fmax, htk=htk), n_mels + 2), htk=htk)


def _bands(weights: np.ndarray, filters_per_band: int) -> list[tuple[int, int, int, int]]:
    """Split the filters into bands of consecutive filters: (first, stop, first bin, stop bin)."""
    bands = []
    for start in range(0, weights.shape[0], filters_per_band):
        stop = min(start + filters_per_band, weights.shape[0])
        nonzero = np.flatnonzero(weights[start:stop].any(axis=0))
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 1)
        bands.append((start, stop, lo, hi))
    return bands


# ----------------------------------------------------------------------------- modules


class LogMel(nn.Module):
    """Log-mel spectrogram in dB, ``(B, N)`` -> ``(B, 1, n_mels, 1 + N // hop_length)``.

    Matches ``librosa.power_to_db(librosa.feature.melspectrogram(y, center=True, pad_mode='constant'))``
    with the same settings. ``lengths`` (samples per row) keeps zero padding in a batch from
    changing a clip's ``db_reference='max'`` or ``top_db`` floor.
    """

    # Filters per band: MKL (torch on the CPU) does best with wider bands, OpenBLAS (numpy) with
    # narrow ones (BENCHMARKS.md). GPUs keep torch's wide bands.
    FILTERS_PER_BAND = 16
    FILTERS_PER_BAND_NUMPY = 4
    NUMPY_ON_CPU = True  # False: torch's products on the CPU too (the tests compare both)

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, win_length: int | None = None,
                 fmin: float = 0.0, fmax: float | None = None, power: float = 2.0, htk: bool = False,
                 mel_norm: str | None = "slaney", db_reference: str = "max", top_db: float | None = 80.0,
                 amin: float = 1e-10):
        super().__init__()
        self.n_fft, self.hop_length, self.n_mels, self.power = n_fft, hop_length, n_mels, power
        self.chunk_frames = max(1, self.CHUNK_SAMPLES // n_fft)
        self.db_reference, self.top_db, self.amin = db_reference, top_db, amin
        win_length = win_length or n_fft
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        left = (n_fft - win_length) // 2
        window = nn.functional.pad(window, (left, n_fft - win_length - left)).float()
        weights = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                 htk=htk, norm=None if mel_norm == "none" else mel_norm)
        self.bands = _bands(weights, self.FILTERS_PER_BAND)
        self.numpy_bands = _bands(weights, self.FILTERS_PER_BAND_NUMPY)
        self.register_buffer("window", window, persistent=False)
        # (n_bins, n_mels), and the same with each row repeated for the real and imaginary part.
        self.register_buffer("mel_t", torch.from_numpy(weights.T.copy()), persistent=False)
        self.register_buffer("mel_t2", torch.from_numpy(np.repeat(weights.T, 2, axis=0)), persistent=False)
        # The numpy products' operands, sliced once: (mel columns, spectrum columns, weights).
        scale = 2 if power == 2.0 else 1
        weights_t = np.repeat(weights.T, scale, axis=0)
        self.numpy_blocks = [(slice(start, stop), slice(scale * lo, scale * hi),
                              np.ascontiguousarray(weights_t[scale * lo : scale * hi, start:stop]))
                             for start, stop, lo, hi in self.numpy_bands]

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    # At most this many samples are framed and transformed at once (384 frames of n_fft 1024), in as
    # few equal chunks as that allows: memory stays bounded for clips of any length, the frames and
    # their spectrum stay in the core's cache, and each chunk's fixed cost is paid as few times as
    # possible (the chunk sizes tried are in BENCHMARKS.md).
    CHUNK_SAMPLES = 384 * 1024

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mel power ``(B, T, n_mels)`` (time-major, as computed)."""
        b, n = waveform.shape
        t = self.n_frames(n)
        out = waveform.new_empty(b, t, self.n_mels)
        out_np = out.numpy() if self.numpy_products(waveform) else None
        size = -(-t // -(-t // self.chunk_frames))  # as few chunks as chunk_frames allows, of equal length
        for i in range(0, t, size):
            stop = min(t, i + size)
            if out_np is not None:
                # Rows of n_fft + 2: the frames are transformed in place (see _power_mel_chunk_numpy).
                padded = waveform.new_empty(b, stop - i, self.n_fft + 2)
                self._windowed_frames(waveform, i, stop, out=padded[..., : self.n_fft])
                self._power_mel_chunk_numpy(padded, out_np[:, i:stop])
            else:
                self._power_mel_chunk(self._windowed_frames(waveform, i, stop), out[:, i:stop])
        return out

    def _windowed_frames(self, waveform: torch.Tensor, start: int, stop: int,
                         out: torch.Tensor | None = None) -> torch.Tensor:
        """Frames ``start .. stop - 1`` of the centred (zero-padded) signal times the window,
        ``(B, stop - start, n_fft)`` (into ``out`` when given). The frames that lie inside the
        signal are multiplied in one call, as a view of it; the few that reach past either end (two
        or three at each) are framed from a short zero-padded copy. Padding the whole clip first
        cost as much as the window product."""
        n, half, hop = waveform.shape[-1], self.n_fft // 2, self.hop_length
        frames = waveform.new_empty(waveform.shape[0], stop - start, self.n_fft) if out is None else out
        first = min(stop, max(start, -(-half // hop)))  # the first frame with no left padding
        last = max(first, min(stop, (n - half) // hop + 1 if n >= half else 0))  # and past the last one
        if last > first:
            torch.mul(waveform[:, first * hop - half : (last - 1) * hop + half].unfold(-1, self.n_fft, hop), self.window,
                      out=frames[:, first - start : last - start])
        for edges in (range(start, first), range(last, stop)):
            if edges:
                self._edge_frames(waveform, edges, frames, start)
        return frames

    def _edge_frames(self, waveform: torch.Tensor, edges: range, frames: torch.Tensor, start: int) -> None:
        """Consecutive frames ``edges``, which pass an end of the signal, into ``frames`` (row 0 is
        frame ``start``): the samples they span are copied into a zeroed segment, framed from there."""
        # On the CPU through numpy: a numpy call costs less than a torch call, and there are many here.
        n, half, hop, n_fft = waveform.shape[-1], self.n_fft // 2, self.hop_length, self.n_fft
        width = (len(edges) - 1) * hop + n_fft
        if self.numpy_products(waveform):
            wave, window, out, multiply = waveform.numpy(), self.window.numpy(), frames.numpy(), np.multiply
            segment = np.zeros((wave.shape[0], width), dtype=wave.dtype)
        else:
            wave, window, out, multiply = waveform, self.window, frames, torch.mul
            segment = waveform.new_zeros(wave.shape[0], width)
        lo = edges[0] * hop - half  # the segment holds samples lo .. lo + width - 1
        inside = slice(max(lo, 0), min(lo + width, n))
        if inside.stop > inside.start:
            segment[:, inside.start - lo : inside.stop - lo] = wave[:, inside]
        for k, j in enumerate(edges):
            multiply(segment[:, k * hop : k * hop + n_fft], window, out=out[:, j - start])

    def numpy_products(self, x: torch.Tensor) -> bool:
        """Whether the padded frames and band products for waveform ``x`` go through numpy: always
        on the CPU, whatever the thread count, so a clip's cached features are the same bits from a
        worker pool or in-process."""
        return self.NUMPY_ON_CPU and x.device.type == "cpu" and x.dtype == torch.float32

    def _power_mel_chunk_numpy(self, padded: torch.Tensor, out: np.ndarray) -> None:
        """Mel power of the frames in ``padded`` ``(B, t, n_fft + 2)`` (each row's first n_fft values),
        transformed in place by MKL where it can (the same bits as ``torch.fft.rfft``)."""
        # Squares and products on numpy views: a numpy call costs less than a torch call, and a clip makes ~40.
        b, t, width = padded.shape
        rows = padded.numpy().reshape(b * t, width)
        if mkl.real_fft_in_place(rows, self.n_fft):
            parts = rows.reshape(b, t, width)  # (B, t, 2 * n_bins): re, im, re, im, ...
        else:
            parts = torch.view_as_real(torch.fft.rfft(padded[..., : self.n_fft])).numpy().reshape(b, t, width)
        if self.power == 2.0:
            np.square(parts, out=parts)
        else:
            parts = torch.from_numpy(parts).view(torch.complex64).abs().pow_(self.power).numpy()
        for row in range(b):  # one clip at a time: a batched product cannot write into a slice
            for columns, bins, weights in self.numpy_blocks:
                np.matmul(parts[row, :, bins], weights, out=out[row, :, columns])

    def _power_mel_chunk(self, frames: torch.Tensor, out: torch.Tensor) -> None:
        b, t, _ = frames.shape
        spec = torch.fft.rfft(frames)  # (B, t, n_bins) complex
        if self.power == 2.0:
            parts = torch.view_as_real(spec).reshape(b, t, -1)  # (B, t, 2 * n_bins): re, im, re, im, ...
            parts.square_()
            weights, scale = self.mel_t2, 2
        else:
            parts = spec.abs().pow_(self.power)
            weights, scale = self.mel_t, 1
        for row in range(b):
            for start, stop, lo, hi in self.bands:
                torch.matmul(parts[row, :, scale * lo : scale * hi], weights[scale * lo : scale * hi, start:stop],
                             out=out[row, :, start:stop])

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mel = self.power_mel(waveform)  # (B, T, M)
        # dB of a power-equivalent quantity: 10*log10 for power 2, 20*log10 for magnitudes.
        db_per_decade = 20.0 / self.power
        floor = self.amin ** (self.power / 2.0)
        mel.clamp_(min=floor)
        if self.numpy_products(waveform):
            np.log10(mel.numpy(), out=mel.numpy())  # numpy's log10 is faster than torch's here
        else:
            mel.log10_()
        db = mel.mul_(db_per_decade)
        if lengths is not None:
            valid = torch.arange(db.shape[1], device=db.device)[None, :] < (lengths // self.hop_length + 1)[:, None]
            masked = db.masked_fill(~valid[:, :, None], float("-inf"))
        else:
            valid, masked = None, db
        # In place: ``db`` is this call's own tensor (the front-end has no gradient: see power_mel's out=).
        if self.db_reference == "max":
            db.sub_(masked.amax(dim=(1, 2), keepdim=True))
            if self.top_db is not None:
                db.clamp_(min=-self.top_db)
        elif self.top_db is not None:
            torch.maximum(db, masked.amax(dim=(1, 2), keepdim=True) - self.top_db, out=db)
        if valid is not None:
            db = db.masked_fill(~valid[:, :, None], 0.0 if self.db_reference == "max" else float(db.min()))
        return db.transpose(1, 2)[:, None]  # (B, 1, M, T)


def savgol_derivative_coeffs(width: int, order: int) -> np.ndarray:
    """Weights (dot product over a window of ``width``) of the ``order``-th derivative of the
    least-squares polynomial of degree ``order`` at the window's centre; equals
    ``scipy.signal.savgol_coeffs(width, order, deriv=order, use='dot')`` without importing
    scipy.signal (a second of start-up in every worker)."""
    x = np.arange(width, dtype=np.float64) - width // 2
    vander = x[:, None] ** np.arange(order + 1)[None, :]  # (width, order + 1)
    return math.factorial(order) * np.linalg.pinv(vander)[order]


class Deltas(nn.Module):
    """Appends delta and delta-delta channels: ``(B, C, F, T)`` -> ``(B, 3C, F, T)``.

    Same numbers as ``librosa.feature.delta(x, width, order)`` (Savitzky-Golay, mode='interp'):
    for derivative order == polynomial order the edge fit gives a constant, the value at the first
    and last full window. Clips shorter than ``width`` frames are edge-padded.
    """

    def __init__(self, *, width: int = 9):
        super().__init__()
        self.width = width
        kernels = [savgol_derivative_coeffs(width, order).astype(np.float32) for order in (1, 2)]
        self.register_buffer("kernels", torch.from_numpy(np.stack(kernels))[:, None, :], persistent=False)  # (2, 1, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        h = self.width // 2
        rows = x.reshape(b * c * f, 1, t)
        if t < self.width:
            rows = nn.functional.pad(rows, (h, h), mode="replicate")
            d = nn.functional.conv1d(rows, self.kernels)  # (R, 2, T)
        else:
            inner = nn.functional.conv1d(rows, self.kernels)  # (R, 2, T - 2h)
            d = torch.cat([inner[:, :, :1].expand(-1, -1, h), inner, inner[:, :, -1:].expand(-1, -1, h)], dim=2)
        d = d.reshape(b, c, f, 2, t).permute(0, 3, 1, 2, 4).reshape(b, 2 * c, f, t)
        return torch.cat([x, d], dim=1)


class FramedWaveform(nn.Module):
    """``(B, N)`` -> ``(B, 1, hop_length, 1 + N // hop_length)``: the samples themselves, frame ``t``
    holding samples ``t * hop .. (t + 1) * hop`` (zero padded at the end), so a raw-waveform model
    gets the same frame grid, crops and batches as a spectral one."""

    def __init__(self, hop_length: int):
        super().__init__()
        self.hop_length = hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b, n = waveform.shape
        frames = 1 + n // self.hop_length
        padded = nn.functional.pad(waveform, (0, frames * self.hop_length - n))
        return padded.reshape(b, frames, self.hop_length).transpose(1, 2)[:, None]


def channel_names(features: FeatureConfig) -> list[str]:
    """What each input channel holds, in order (``logmel``, ``logmel_delta``, ..., ``waveform``)."""
    if features.kind == "waveform":
        return ["waveform"]
    names = []
    for name in features.channels:
        names += [name] + (["logmel_delta", "logmel_delta2"] if name == "logmel" and features.deltas else [])
    return names


# Channels in dB of a power: a gain adds to them (and an EQ curve adds per band); the others
# (deltas, cepstra, normalised chroma, phase, positions) do not move that way.
DB_CHANNELS = ("logmel", "cqt")


class FrontEnd(nn.Module):
    """The configured front-end: the channels of ``features.channels`` (the log-mel followed by its
    deltas when asked), or the framed waveform. The log-mel is always computed: MFCCs are made
    from it."""

    def __init__(self, audio: AudioConfig, features: FeatureConfig):
        super().__init__()
        f = features
        self.names = channel_names(f)
        self.n_channels = len(self.names)
        if f.kind == "waveform":
            self.waveform = FramedWaveform(f.hop_length)
            return
        self.waveform = None
        self.logmel = LogMel(sample_rate=audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length, n_mels=f.n_mels,
                             win_length=f.win_length, fmin=f.fmin, fmax=f.fmax, power=f.power,
                             htk=f.mel_scale == "htk", mel_norm=f.mel_norm, db_reference=f.db_reference,
                             top_db=f.top_db, amin=f.amin)
        self.deltas = Deltas(width=f.delta_width) if f.deltas else None
        self.channel_order = list(f.channels)
        extra = {}
        for name in f.channels:
            if name == "mfcc":
                extra[name] = MFCC(f.n_mels)
            elif name == "chroma":
                extra[name] = Chroma(sample_rate=audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                                     rows=f.n_mels, window=self.logmel.window)
            elif name == "cqt":
                extra[name] = ConstantQ(sample_rate=audio.sample_rate, hop_length=f.hop_length, n_bins=f.n_mels,
                                        fmin=f.cqt_fmin, bins_per_octave=f.cqt_bins_per_octave,
                                        db_reference=f.db_reference, top_db=f.top_db, amin=f.amin)
            elif name == "phase":
                extra[name] = InstantaneousFrequency(
                    sample_rate=audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                    mel_weights=self.logmel.mel_t.numpy().T, window=self.logmel.window,
                    band_edges_hz=mel_band_edges(sample_rate=audio.sample_rate, n_mels=f.n_mels, fmin=f.fmin,
                                                 fmax=f.fmax, htk=f.mel_scale == "htk"))
            elif name == "freqpos":
                extra[name] = FrequencyPosition(f.n_mels)
            elif name == "denoised":
                extra[name] = FloorSubtracted()
            elif name == "pcen":
                extra[name] = PCEN(sample_rate=audio.sample_rate, hop_length=f.hop_length)
        self.extra = nn.ModuleDict(extra)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.waveform is not None:
            return self.waveform(waveform)
        log_mel = self.logmel(waveform, lengths)
        parts = []
        for name in self.channel_order:
            if name == "logmel":
                parts.append(self.deltas(log_mel) if self.deltas is not None else log_mel)
            elif name in ("mfcc", "freqpos", "pcen"):  # computed from the log-mel (freqpos: only its shape)
                parts.append(self.extra[name](log_mel))
            elif name == "denoised":
                parts.append(self.extra[name](log_mel, None if lengths is None else self.logmel.n_frames(lengths)))
            else:
                parts.append(self.extra[name](waveform))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
