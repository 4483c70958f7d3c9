import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from audiotag.audio.io import load_audio
from audiotag.config import AudioConfig, FeatureConfig
from audiotag.features.frontend import Deltas, FrontEnd, LogMel, mel_filterbank, savgol_derivative_coeffs

from conftest import shared_path


def esc50_clips(n=24):
    folder = shared_path("data", "sources", "esc50")
    files = sorted(folder.glob("*.flac"))
    return [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]  # spread over classes


def librosa_logmel(y, sr, f: FeatureConfig):
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=f.n_fft, hop_length=f.hop_length, win_length=f.win_length,
                                       n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, power=f.power,
                                       htk=f.mel_scale == "htk", norm=None if f.mel_norm == "none" else "slaney",
                                       center=True, pad_mode="constant")
    if f.power == 1.0:
        return librosa.amplitude_to_db(S, ref=np.max if f.db_reference == "max" else 1.0, top_db=f.top_db)
    return librosa.power_to_db(S, ref=np.max if f.db_reference == "max" else 1.0, amin=f.amin, top_db=f.top_db)


SETTINGS = [
    (16000, {}),  # the defaults
    (32000, dict(n_fft=1024, hop_length=320, n_mels=128, fmin=0.0)),  # PANNs-like
    (44100, dict(n_fft=2048, hop_length=512, n_mels=128, fmin=20.0, fmax=16000.0)),  # FAT2019 kernels
    (16000, dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, mel_scale="htk", mel_norm="none")),
    (16000, dict(power=1.0, db_reference="absolute", top_db=None)),
]


@pytest.mark.parametrize("sr, changes", SETTINGS)
def test_logmel_matches_librosa_on_real_clips(sr, changes):
    f = FeatureConfig(**changes)
    frontend = FrontEnd(AudioConfig(sample_rate=sr), f)
    worst = 0.0
    for path in esc50_clips(12 if changes else 24):
        y, _ = load_audio(path, sample_rate=sr)
        expected = librosa_logmel(y, sr, f)
        with torch.no_grad():
            ours = frontend(torch.from_numpy(y)[None])[0, 0].numpy()
        assert ours.shape == expected.shape
        within = expected > expected.max() - 80  # bins within 80 dB of the clip's maximum
        worst = max(worst, float(np.abs(ours - expected)[within].max()))
    assert worst <= 0.1, f"max |dB difference| {worst:.4f}"


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
def test_mel_filterbank_equals_librosa(htk, norm):
    for sr, n_fft, n_mels, fmin, fmax in [(16000, 1024, 64, 20, None), (44100, 2048, 128, 0, 16000), (8000, 256, 40, 50, 3800)]:
        ours = mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_deltas_equal_librosa_including_edges():
    S = librosa.power_to_db(np.random.default_rng(0).uniform(1e-6, 1, (32, 120)))
    out = Deltas(width=9)(torch.from_numpy(S)[None, None].float())[0].numpy()
    assert out.shape == (3, 32, 120)
    np.testing.assert_allclose(out[0], S, atol=1e-4)
    np.testing.assert_allclose(out[1], librosa.feature.delta(S, width=9, order=1), atol=1e-3)
    np.testing.assert_allclose(out[2], librosa.feature.delta(S, width=9, order=2), atol=1e-3)


def test_deltas_of_clips_shorter_than_the_window_stay_finite():
    out = Deltas(width=9)(torch.randn(2, 1, 8, 4))
    assert out.shape == (2, 3, 8, 4) and torch.isfinite(out).all()


def test_savgol_coefficients_equal_scipy():
    from scipy.signal import savgol_coeffs

    for width in (3, 5, 9, 15):
        for order in (1, 2):
            np.testing.assert_allclose(savgol_derivative_coeffs(width, order),
                                       savgol_coeffs(width, order, deriv=order, use="dot"), atol=1e-12)


@pytest.mark.parametrize("reference", [dict(), dict(db_reference="absolute", top_db=80.0)])
def test_a_padded_batch_gives_each_clip_its_own_result(reference):
    m = LogMel(sample_rate=16000, n_fft=1024, hop_length=320, n_mels=64, **reference)
    rng = np.random.default_rng(1)
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (16000, 7000, 321)]
    batch = torch.zeros(3, 16000)
    for i, y in enumerate(clips):
        batch[i, : len(y)] = torch.from_numpy(y)
    out = m(batch, torch.tensor([len(y) for y in clips]))
    for i, y in enumerate(clips):
        single = m(torch.from_numpy(y)[None])[0, 0]
        t = single.shape[1]
        assert t == 1 + len(y) // 320
        torch.testing.assert_close(out[i, 0, :, :t], single)


@pytest.mark.parametrize("sr, changes", SETTINGS)
def test_numpy_and_torch_band_products_agree(sr, changes):
    """The CPU computes the mel bands through numpy in narrow bands, GPUs through torch in wide
    ones: the same numbers either way."""
    f = FeatureConfig(**changes)
    frontend = FrontEnd(AudioConfig(sample_rate=sr), f)
    y = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 0.5, (2, sr * 3)).astype(np.float32))
    lengths = torch.tensor([sr * 3, sr])
    assert len(frontend.logmel.numpy_bands) > len(frontend.logmel.bands)
    assert frontend.logmel.numpy_products(y)
    with_numpy = frontend(y, lengths)
    frontend.logmel.NUMPY_ON_CPU = False
    assert not frontend.logmel.numpy_products(y)
    with_torch = frontend(y, lengths)
    torch.testing.assert_close(with_numpy, with_torch, atol=1e-3, rtol=0)  # dB


@pytest.mark.parametrize("batch", [1, 2])
def test_long_clips_are_processed_in_bounded_chunks_with_the_same_result(batch):
    m = LogMel(sample_rate=16000, n_fft=1024, hop_length=320, n_mels=64)
    y = torch.from_numpy(np.random.default_rng(2).uniform(-0.5, 0.5, (batch, 16000 * 30)).astype(np.float32))
    assert m.chunk_frames == 384  # 1.5 MiB of frames
    chunked = m(y)
    torch.testing.assert_close(chunked[-1:], m(y[-1:]))  # a clip in a batch is computed as alone
    m.chunk_frames = 10**6
    whole = m(y)
    m.chunk_frames = 100  # chunk edges fall both inside the clip and on its padded ends
    for result in (chunked, m(y)):
        torch.testing.assert_close(result, whole)  # equal up to the FFT's rounding, which depends on batch size


@pytest.mark.parametrize("frames, chunks", [(384, [(0, 384)]), (385, [(0, 193), (193, 385)]), (751, [(0, 376), (376, 751)]),
                                             (1000, [(0, 334), (334, 668), (668, 1000)])])
def test_a_clip_is_split_into_as_few_equal_chunks_as_the_bound_allows(frames, chunks, monkeypatch):
    """Each chunk costs a fixed ~60 us of calls: no short remainder chunk (751 frames: not 384 + 367)."""
    m = LogMel(sample_rate=16000, n_fft=1024, hop_length=320, n_mels=64)
    seen = []
    framing = m._windowed_frames
    def spy(w, start, stop, **kw):
        seen.append((start, stop))
        return framing(w, start, stop, **kw)

    monkeypatch.setattr(m, "_windowed_frames", spy)
    m(torch.zeros(1, (frames - 1) * 320))
    assert seen == chunks


def test_frontend_has_no_learnable_or_saved_state():
    fe = FrontEnd(AudioConfig(), FeatureConfig(deltas=True))
    assert fe.n_channels == 3 and not list(fe.parameters()) and fe.state_dict() == {}
    out = fe(torch.zeros(1, 16000) + 0.1 * torch.randn(1, 16000))
    assert out.shape == (1, 3, 64, 51)


def test_db_reference_max_puts_the_loudest_bin_at_zero_and_floors_at_top_db():
    fe = FrontEnd(AudioConfig(), FeatureConfig())
    x = fe(0.3 * torch.randn(1, 16000))
    assert x.max().item() == 0.0 and x.min().item() >= -80.0


def test_flac_source_decodes_like_soundfile():
    path = esc50_clips(1)[0]
    y, info = load_audio(path, sample_rate=16000)
    ref, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and info.container == "FLAC"
    np.testing.assert_array_equal(y, ref)
