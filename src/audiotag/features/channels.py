"""Extra input channels stacked after the log-mel: ``(B, N)`` waveform -> ``(B, 1, F, T)`` each.

Every channel has the log-mel's frame grid (``1 + N // hop_length`` frames, centred, zero padded)
and its height ``F = n_mels``, so any combination stacks into one ``(B, C, F, T)`` input that the
CNNs, crops and augmentations handle unchanged:

- ``mfcc``: DCT-II (orthonormal) of the log-mel in dB over all ``n_mels`` bands, as
  ``librosa.feature.mfcc(S=log_mel_db, n_mfcc=n_mels)``;
- ``chroma``: ``librosa.feature.chroma_stft`` (tuning 0, each frame scaled to max 1); the 12 pitch
  classes are repeated to fill the ``F`` rows;
- ``cqt``: a constant-Q spectrogram in dB, ``n_mels`` geometrically spaced bins from ``cqt_fmin``;
  each octave group is taken from its own STFT whose window is as long as the group's lowest
  bin needs (Q cycles), so low notes are resolved and high ones stay sharp in time;
- ``phase``: phase-derived instantaneous frequency (frequency reassignment), as each mel band's
  power-weighted frequency relative to its centre: tones read steady values, noise reads noise;
- ``freqpos``: the band's position, -1 (lowest) to 1 (highest): lets a convolution know where in
  frequency it is (3rd place of FAT2019's CoordConv-style channel);
- ``denoised``: the log-mel minus each band's noise floor (its 20th percentile over the clip's
  frames): a steady background or a microphone's colouring subtracts out, events stand out;
- ``pcen``: per-channel energy normalisation of the mel power (``librosa.pcen``'s definition):
  each band divided by its own smoothed recent past, an automatic gain control per band that
  favours onsets over steady noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..config import cqt_top_hz

EXTRA_CHANNELS = ("mfcc", "chroma", "cqt", "phase", "freqpos", "denoised", "pcen")


def _centred_frames(waveform: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """``(B, T, n_fft)`` frames, centred and zero padded like librosa's ``center=True`` (a view)."""
    half = n_fft // 2
    padded = nn.functional.pad(waveform[:, None, :], (half, half))[:, 0]
    return padded.unfold(-1, n_fft, hop_length)


def _fill_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``(B, R, T)`` -> ``(B, rows, T)`` by repeating each of the R rows over an equal share."""
    index = (torch.arange(rows, device=x.device) * x.shape[1]) // rows
    return x.index_select(1, index)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II ``(n, n)``: ``coefficients = D @ x`` (scipy.fft.dct(norm='ortho'))."""
    k = np.arange(n)[:, None]
    d = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class MFCC(nn.Module):
    """``(B, 1, M, T)`` log-mel dB -> ``(B, 1, M, T)`` cepstral coefficients 0..M-1."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("dct", torch.from_numpy(dct_matrix(n_mels).astype(np.float32)), persistent=False)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return torch.einsum("km,bcmt->bckt", self.dct, log_mel)


def chroma_filterbank(*, sample_rate: int, n_fft: int, n_chroma: int = 12, tuning: float = 0.0,
                      centre_octave: float = 5.0, octave_width: float = 2.0) -> np.ndarray:
    """Chroma weights ``(n_chroma, 1 + n_fft // 2)`` with librosa.filters.chroma's definition: each FFT
    bin spreads onto the pitch classes with a Gaussian as wide as the bin (in chroma steps), columns
    have unit L2 norm, a Gaussian over octaves centred on ``centre_octave`` favours the middle of the
    range, and row 0 is C."""
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    bins = n_chroma * np.log2(freqs / (a440 / 16))  # pitch in chroma steps above A0 - 4 octaves
    bins = np.concatenate([[bins[0] - 1.5 * n_chroma], bins])  # DC: an arbitrary far-below position
    widths = np.concatenate([np.maximum(np.diff(bins), 1.0), [1.0]])
    half = round(n_chroma / 2)
    distance = np.remainder(bins[None, :] - np.arange(n_chroma)[:, None] + half + 10 * n_chroma, n_chroma) - half
    weights = np.exp(-0.5 * (2 * distance / widths[None, :]) ** 2)
    weights /= np.maximum(np.linalg.norm(weights, axis=0, keepdims=True), np.finfo(np.float64).tiny)
    if octave_width:
        weights *= np.exp(-0.5 * ((bins / n_chroma - centre_octave) / octave_width) ** 2)[None, :]
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)  # A-based -> C-based
    return np.ascontiguousarray(weights[:, : 1 + n_fft // 2]).astype(np.float32)


class Chroma(nn.Module):
    """``(B, N)`` -> ``(B, 1, rows, T)`` chroma of the power STFT, each frame's maximum scaled to 1."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, rows: int, window: torch.Tensor):
        super().__init__()
        self.n_fft, self.hop_length, self.rows = n_fft, hop_length, rows
        self.register_buffer("window", window, persistent=False)
        fb = chroma_filterbank(sample_rate=sample_rate, n_fft=n_fft)
        self.register_buffer("fb_t", torch.from_numpy(fb.T.copy()), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft(_centred_frames(waveform, self.n_fft, self.hop_length) * self.window).abs().square()
        chroma = power @ self.fb_t  # (B, T, 12)
        peak = chroma.amax(dim=2, keepdim=True)
        chroma = torch.where(peak > torch.finfo(chroma.dtype).tiny, chroma / peak, torch.zeros_like(chroma))
        return _fill_rows(chroma.transpose(1, 2), self.rows)[:, None]


def cqt_frequencies(n_bins: int, fmin: float, bins_per_octave: int) -> np.ndarray:
    return fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)


def next_smooth(n: int) -> int:
    """The smallest integer >= ``n`` with no prime factor above 5 (a fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def n_fft_max_half(groups: list[tuple[int, int, int, int]]) -> int:
    """Samples (at the full rate) that the widest decimated window reaches past the clip's end."""
    return max(n_fft * factor // 2 for _, _, n_fft, factor in groups)


class ConstantQ(nn.Module):
    """``(B, N)`` -> ``(B, 1, n_bins, T)`` constant-Q power in dB (same dB convention as LogMel).

    Bin ``k`` sits at ``fmin * 2**(k / bins_per_octave)`` with bandwidth ``f_k / Q``; its power is a
    Hann-shaped average of the FFT bins within one bandwidth of the centre, taken from the STFT of
    its octave group, whose unit-energy window holds Q periods of the group's lowest frequency (at
    least one hop). Low groups are computed on the waveform decimated by a power of two (as
    librosa.cqt does), so their long windows cost a short FFT.
    """

    def __init__(self, *, sample_rate: int, hop_length: int, n_bins: int, fmin: float, bins_per_octave: int,
                 db_reference: str = "max", top_db: float | None = 80.0, amin: float = 1e-10):
        super().__init__()
        self.hop_length, self.n_bins = hop_length, n_bins
        self.db_reference, self.top_db, self.amin = db_reference, top_db, amin
        q = 1.0 / (2.0 ** (1.0 / bins_per_octave) - 1)
        freqs = cqt_frequencies(n_bins, fmin, bins_per_octave)
        self.groups: list[tuple[int, int, int, int]] = []  # (first bin, stop bin, n_fft, decimation)
        for start in range(0, n_bins, bins_per_octave):
            stop = min(start + bins_per_octave, n_bins)
            # Q periods of the lowest frequency, but never shorter than a hop: every sample is heard.
            length = max(q * sample_rate / freqs[start], float(hop_length))
            top = cqt_top_hz(stop, fmin, bins_per_octave)
            factor = 1
            while (hop_length % (2 * factor) == 0 and top < 0.4 * sample_rate / (2 * factor)
                   and length / (2 * factor) >= 64):
                factor *= 2
            rate = sample_rate / factor
            n_fft = 2 ** math.ceil(math.log2(length / factor))
            fft_hz = np.arange(n_fft // 2 + 1) * rate / n_fft
            weights = np.zeros((n_fft // 2 + 1, stop - start))
            for j, f in enumerate(freqs[start:stop]):
                bandwidth = max(f / q, 2.0 * rate / n_fft)  # at least the window's own resolution
                distance = np.abs(fft_hz - f) / bandwidth
                w = np.where(distance < 1, np.cos(0.5 * np.pi * distance) ** 2, 0.0)
                # decimating by `factor` divides white noise's power per sample by it: restore it
                weights[:, j] = w / w.sum() * factor
            win = torch.hann_window(min(int(round(length / factor)), n_fft), periodic=True, dtype=torch.float64)
            left = (n_fft - len(win)) // 2
            win = nn.functional.pad(win, (left, n_fft - len(win) - left))
            # Unit energy: white noise reads the same power in every bin, as librosa.cqt(scale=True).
            win = win / win.square().sum().sqrt()
            self.register_buffer(f"window_{len(self.groups)}", win.float(), persistent=False)
            self.register_buffer(f"weights_{len(self.groups)}", torch.from_numpy(weights.astype(np.float32)),
                                 persistent=False)
            self.groups.append((start, stop, n_fft, factor))

    @staticmethod
    def _decimated(spectrum: torch.Tensor, n: int, factor: int) -> torch.Tensor:
        """The waveform (given by the rfft of its ``n`` zero-padded samples, ``n`` divisible by
        ``factor``) low-passed and resampled to 1/``factor`` of its rate."""
        n_d = n // factor
        return torch.fft.irfft(spectrum[:, : n_d // 2 + 1], n=n_d) * (n_d / n)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b, n = waveform.shape
        frames_out = 1 + n // self.hop_length
        out = waveform.new_empty(b, frames_out, self.n_bins)
        signals = {1: waveform}
        factors = sorted({g[3] for g in self.groups} - {1})
        if factors:
            # zero padded to a length whose decimated versions all have only factors 2, 3 and 5
            # (fast FFTs); the padding keeps the clip's end from wrapping onto its start
            padded = factors[-1] * next_smooth(-(-(n + n_fft_max_half(self.groups)) // factors[-1]))
            spectrum = torch.fft.rfft(nn.functional.pad(waveform, (0, padded - n)))
            signals.update({factor: self._decimated(spectrum, padded, factor) for factor in factors})
        for g, (start, stop, n_fft, factor) in enumerate(self.groups):
            frames = _centred_frames(signals[factor], n_fft, self.hop_length // factor)
            if frames.shape[1] < frames_out:  # a decimated clip may round to one frame fewer
                frames = torch.cat([frames, frames[:, -1:].expand(-1, frames_out - frames.shape[1], -1)], dim=1)
            spec = torch.view_as_real(torch.fft.rfft(frames[:, :frames_out] * getattr(self, f"window_{g}")))
            power = spec.square().sum(dim=-1)  # |z|^2 without the square root of abs()
            torch.matmul(power, getattr(self, f"weights_{g}"), out=out[:, :, start:stop])
        db = out.clamp_(min=self.amin).log10_().mul_(10.0)
        if self.db_reference == "max":
            db = db - db.amax(dim=(1, 2), keepdim=True)
        if self.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - self.top_db)
        return db.transpose(1, 2)[:, None]


class InstantaneousFrequency(nn.Module):
    """``(B, N)`` -> ``(B, 1, M, T)``: where, inside each mel band, the band's energy sits in frequency.

    Each STFT bin's instantaneous frequency comes from the phase's rate of change, measured within
    one frame with a derivative window (frequency reassignment, as ``librosa.reassigned_spectrogram``),
    so the hop size cannot alias it. Band ``m`` averages its bins' frequencies weighted by filter
    weight times power and reports the offset from the band's centre in half-widths, clipped to
    [-1, 1]: a tone reads the same value in all the bins around it, so the channel gives the pitch
    more finely than the mel bands do. Silent bands read 0.
    """

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, mel_weights: np.ndarray,
                 band_edges_hz: np.ndarray, window: torch.Tensor):
        super().__init__()
        self.n_fft, self.hop_length, self.sample_rate = n_fft, hop_length, sample_rate
        # A window's derivative (per sample), by central differences on the periodic window.
        derivative = (torch.roll(window, -1) - torch.roll(window, 1)) / 2
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("window_derivative", derivative, persistent=False)
        self.register_buffer("mel_t", torch.from_numpy(mel_weights.T.copy()), persistent=False)  # (bins, M)
        self.register_buffer("bin_hz", torch.arange(n_fft // 2 + 1, dtype=torch.float32) * sample_rate / n_fft,
                             persistent=False)
        lo, centre, hi = band_edges_hz[:-2], band_edges_hz[1:-1], band_edges_hz[2:]
        self.register_buffer("centre_hz", torch.tensor(centre, dtype=torch.float32), persistent=False)
        self.register_buffer("half_width_hz", torch.tensor((hi - lo) / 2, dtype=torch.float32), persistent=False)

    def bin_frequencies(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instantaneous frequency in Hz and power of every STFT bin, each ``(B, T, n_fft // 2 + 1)``."""
        frames = _centred_frames(waveform, self.n_fft, self.hop_length)
        spec = torch.fft.rfft(frames * self.window)
        spec_d = torch.fft.rfft(frames * self.window_derivative)
        power = spec.abs().square()
        safe = power.clamp_min(torch.finfo(power.dtype).tiny)
        correction = (spec_d * spec.conj()).imag / safe * (self.sample_rate / (2 * math.pi))
        return self.bin_hz - correction, power

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        freq, power = self.bin_frequencies(waveform)
        weight = power @ self.mel_t  # (B, T, M)
        floor = weight.amax(dim=(1, 2), keepdim=True) * 1e-8 + torch.finfo(weight.dtype).tiny
        band_hz = ((power * freq) @ self.mel_t) / (weight + floor)
        offset = torch.where(weight > floor, (band_hz - self.centre_hz) / self.half_width_hz, torch.zeros_like(band_hz))
        return offset.clamp(-1.0, 1.0).transpose(1, 2)[:, None]


class FrequencyPosition(nn.Module):
    """A constant channel: each band's position from -1 (lowest) to 1 (highest)."""

    def __init__(self, rows: int):
        super().__init__()
        self.register_buffer("ramp", torch.linspace(-1.0, 1.0, rows), persistent=False)

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        b, _, _, t = like.shape
        return self.ramp[None, None, :, None].expand(b, 1, -1, t).to(like.dtype)


class FloorSubtracted(nn.Module):
    """``(B, 1, M, T)`` log-mel dB -> the same minus each band's ``quantile`` over its valid frames
    (``frames`` per row; the rest read 0). The quantile is the nearest order statistic, frame
    ``round(quantile * (T - 1))`` in sorted order (``torch.quantile(..., interpolation='nearest')``)."""

    def __init__(self, quantile: float = 0.2):
        super().__init__()
        self.quantile = quantile

    def forward(self, log_mel: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        if frames is None:
            k = round(self.quantile * (log_mel.shape[3] - 1)) + 1  # kthvalue counts from 1; it skips a full sort
            return log_mel - log_mel.kthvalue(k, dim=3, keepdim=True).values
        valid = torch.arange(log_mel.shape[3], device=log_mel.device)[None, :] < frames[:, None]  # (B, T)
        valid = valid[:, None, None, :]
        floor = torch.nanquantile(log_mel.masked_fill(~valid, float("nan")), self.quantile, dim=3, keepdim=True,
                                      interpolation="nearest")
        return (log_mel - floor).masked_fill(~valid, 0.0)


class PCEN(nn.Module):
    """``(B, 1, M, T)`` log-mel dB -> per-channel energy normalisation of its power, as
    ``librosa.pcen(S, sr, hop_length, gain, bias, power, time_constant, eps)`` on ``S = 10**(dB/10)``:
    ``(S / (eps + M)**gain + bias)**power - bias**power`` with ``M`` the first-order IIR smoothing of
    ``S`` over time, started at the first frame's steady state (librosa starts at 1 unless given
    ``zi``). The recursion runs in blocks of ``BLOCK`` frames: a triangular matrix product inside
    each block, then one carried value per block."""

    BLOCK = 32

    def __init__(self, *, sample_rate: int, hop_length: int, gain: float = 0.98, bias: float = 2.0,
                 power: float = 0.5, time_constant: float = 0.4, eps: float = 1e-6):
        super().__init__()
        self.gain, self.bias, self.power, self.eps = gain, bias, power, eps
        t_frames = time_constant * sample_rate / hop_length
        b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)  # librosa's smoothing coefficient
        lag = np.arange(self.BLOCK)[:, None] - np.arange(self.BLOCK)[None, :]
        within = np.where(lag >= 0, b * (1 - b) ** np.maximum(lag, 0), 0.0)  # (out, in) frames of a block
        self.register_buffer("within_t", torch.tensor(within.T.copy()), persistent=False)
        self.register_buffer("decay", torch.tensor((1 - b) ** np.arange(1, self.BLOCK + 1)), persistent=False)

    def smooth(self, power: torch.Tensor) -> torch.Tensor:
        """``(R, T)`` float64 -> its IIR smoothing ``M``."""
        r, t = power.shape
        n_blocks = -(-t // self.BLOCK)
        blocks = nn.functional.pad(power, (0, n_blocks * self.BLOCK - t)).reshape(r, n_blocks, self.BLOCK)
        inner = blocks @ self.within_t  # each block's response to its own frames
        out = torch.empty_like(inner)
        carry = power[:, 0]  # the steady state of the first frame
        for k in range(n_blocks):
            out[:, k] = inner[:, k] + self.decay * carry[:, None]
            carry = out[:, k, -1]
        return out.reshape(r, -1)[:, :t]

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        b, c, m, t = log_mel.shape
        power = torch.pow(10.0, log_mel.double() / 10.0).reshape(b * c * m, t)
        smooth = self.smooth(power)
        out = (power / (self.eps + smooth) ** self.gain + self.bias) ** self.power - self.bias**self.power
        return out.reshape(b, c, m, t).to(log_mel.dtype)
