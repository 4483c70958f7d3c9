"""Extra input channels: parity with librosa where it has the same feature, and what each one
must say about signals whose answer is known (tones)."""

import librosa
import numpy as np
import pytest
import torch

from audiotag.audio.io import load_audio
from audiotag.config import AudioConfig, ConfigError, FeatureConfig, load_config
from audiotag.features.cache import compute_features
from audiotag.features.channels import FloorSubtracted, chroma_filterbank, cqt_frequencies, dct_matrix
from audiotag.features.frontend import DB_CHANNELS, FrontEnd, channel_names

from test_frontend import esc50_clips, librosa_logmel

SR = 16000


def features(y, **changes):
    f = FeatureConfig(**changes)
    frontend = FrontEnd(AudioConfig(sample_rate=SR), f).eval()
    with torch.no_grad():
        return frontend(torch.from_numpy(np.asarray(y, np.float32))[None])[0].numpy(), frontend


def tone(hz, seconds=1.0, amplitude=0.5):
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_channels_stack_in_config_order_on_the_log_mel_grid():
    y = tone(440.0, 1.3) + np.random.default_rng(0).normal(0, 0.01, int(SR * 1.3)).astype(np.float32)
    x, frontend = features(y, deltas=True, channels=["phase", "freqpos", "logmel", "mfcc", "cqt", "chroma"])
    assert frontend.names == ["phase", "freqpos", "logmel", "logmel_delta", "logmel_delta2", "mfcc", "cqt", "chroma"]
    assert x.shape == (8, 64, 1 + len(y) // 320) and np.isfinite(x).all()
    plain, _ = features(y)
    np.testing.assert_array_equal(x[2], plain[0])  # other channels never change the log-mel
    alone, _ = features(y, channels=["mfcc"])
    np.testing.assert_array_equal(alone[0], x[5])  # MFCCs without the log-mel channel
    assert channel_names(FeatureConfig(kind="waveform")) == ["waveform"]
    assert set(DB_CHANNELS) <= {"logmel", "cqt"}


def test_mfcc_equals_librosa_on_the_log_mel():
    y, _ = load_audio(esc50_clips(1)[0], sample_rate=SR)
    x, _ = features(y, channels=["logmel", "mfcc"])
    expected = librosa.feature.mfcc(S=librosa_logmel(y, SR, FeatureConfig()), n_mfcc=64)
    np.testing.assert_allclose(x[1], expected, atol=2e-3 * np.abs(expected).max())
    np.testing.assert_allclose(dct_matrix(5) @ dct_matrix(5).T, np.eye(5), atol=1e-12)  # orthonormal


@pytest.mark.parametrize("n_fft", [512, 1024, 2048])
def test_chroma_filterbank_equals_librosa(n_fft):
    np.testing.assert_allclose(chroma_filterbank(sample_rate=SR, n_fft=n_fft),
                               librosa.filters.chroma(sr=SR, n_fft=n_fft, tuning=0.0), atol=1e-6)


def test_chroma_equals_librosa_and_names_the_pitch_class():
    y, _ = load_audio(esc50_clips(3)[1], sample_rate=SR)
    x, _ = features(y, channels=["logmel", "chroma"])
    power = np.abs(librosa.stft(y, n_fft=1024, hop_length=320, center=True, pad_mode="constant")) ** 2
    expected = librosa.feature.chroma_stft(S=power, sr=SR, n_fft=1024, tuning=0.0)
    rows = np.searchsorted((np.arange(64) * 12) // 64, np.arange(12))  # first of each class's rows
    np.testing.assert_allclose(x[1][rows], expected, atol=1e-4)
    a4, _ = features(tone(440.0), channels=["logmel", "chroma"])
    assert (np.arange(64) * 12 // 64)[a4[1].mean(axis=1).argmax()] == 9  # A is the 10th class from C


@pytest.mark.parametrize("hz", [55.0, 261.6, 440.0, 1000.0, 3520.0])
def test_cqt_peaks_in_the_same_bin_as_librosa(hz):
    x, _ = features(tone(hz), channels=["logmel", "cqt"])
    expected = np.abs(librosa.cqt(tone(hz), sr=SR, hop_length=320, fmin=30.0, n_bins=64, bins_per_octave=8))
    ours = x[1].mean(axis=1).argmax()
    assert ours == expected.mean(axis=1).argmax()
    assert abs(np.log2(cqt_frequencies(64, 30.0, 8)[ours] / hz)) <= 1 / 16  # within half a bin


def test_cqt_follows_librosa_on_real_clips():
    worst = 1.0
    for path in esc50_clips(8):
        y, _ = load_audio(path, sample_rate=SR)
        x, _ = features(y, channels=["logmel", "cqt"])
        expected = librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=SR, hop_length=320, fmin=30.0, n_bins=64,
                                                               bins_per_octave=8)), ref=np.max, top_db=80)
        assert x[1].shape == expected.shape
        worst = min(worst, np.corrcoef(x[1].ravel(), expected.ravel())[0, 1])
    # Not the same numbers (octave-group windows instead of one filter per bin), the same picture.
    assert worst > 0.9


@pytest.mark.filterwarnings("ignore:'where' used without 'out'")  # inside librosa
def test_instantaneous_frequency_equals_librosa_reassignment():
    y, _ = load_audio(esc50_clips(2)[0], sample_rate=SR)
    _, frontend = features(y, channels=["phase"])
    with torch.no_grad():
        freq, power = frontend.extra["phase"].bin_frequencies(torch.from_numpy(y)[None])
    expected, _, _ = librosa.reassigned_spectrogram(y, sr=SR, n_fft=1024, hop_length=320, center=True,
                                                    pad_mode="constant", reassign_times=False, fill_nan=False)
    ours, power = freq[0].numpy().T, power[0].numpy().T
    loud = (power > power.max() * 1e-4) & np.isfinite(expected)
    assert loud.sum() > 1000
    np.testing.assert_allclose(ours[loud], expected[loud], atol=0.05)  # Hz


@pytest.mark.parametrize("hz", [440.0, 1234.5, 3000.0])
def test_phase_channel_places_a_tone_inside_its_band(hz):
    x, frontend = features(tone(hz), channels=["logmel", "phase"])
    band = x[0].mean(axis=1).argmax()
    phase = frontend.extra["phase"]
    expected = (hz - phase.centre_hz[band].item()) / phase.half_width_hz[band].item()
    assert np.median(x[1, band, 2:-2]) == pytest.approx(expected, abs=0.02)
    silent, _ = features(np.zeros(SR, np.float32), channels=["phase"])
    assert not silent[0].any()


def test_frequency_position_is_a_ramp():
    x, _ = features(tone(440.0), channels=["logmel", "freqpos"])
    np.testing.assert_allclose(x[1][:, 0], np.linspace(-1, 1, 64), atol=1e-6)
    assert (x[1] == x[1][:, :1]).all()


def test_pcen_equals_librosa_started_at_the_first_frame():
    import scipy.signal

    y, _ = load_audio(esc50_clips(2)[1], sample_rate=SR)
    x, frontend = features(y, channels=["logmel", "pcen"])
    power = 10.0 ** (x[0].astype(np.float64) / 10.0)
    b = frontend.extra["pcen"].within_t[0, 0].item()  # the smoothing coefficient sits on the diagonal
    t_frames = 0.4 * SR / 320
    assert b == pytest.approx((np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2))
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, :] * power[:, :1]
    expected = librosa.pcen(power, sr=SR, hop_length=320, zi=zi)
    assert x.shape[2] > 3 * 32  # several blocks of the blocked recursion
    np.testing.assert_allclose(x[1], expected, atol=1e-5)


def test_pcen_reads_a_steady_tone_as_steady_and_an_onset_as_a_peak():
    y = np.concatenate([tone(1000.0, 2.0, 0.01), tone(1000.0, 2.0, 0.5)])
    x, _ = features(y, channels=["pcen"])
    band = x[0].mean(axis=1).argmax()
    row = x[0][band]
    onset = 2 * SR // 320
    assert row[onset: onset + 5].max() > 3 * row[onset - 20: onset].mean()  # the jump stands out ...
    assert abs(row[-5:].mean() - row[onset - 5: onset].mean()) < 0.1 * row[onset: onset + 5].max()  # ... then adapts


def test_denoised_channel_removes_each_bands_floor_but_keeps_events():
    rng = np.random.default_rng(3)
    hum = tone(300.0, 3.0, 0.05) + rng.normal(0, 0.003, 3 * SR).astype(np.float32)
    burst = hum.copy()
    burst[SR: SR + SR // 4] += tone(3000.0, 0.25, 0.3)
    x, _ = features(burst, channels=["logmel", "denoised"])
    log_mel, denoised = x
    np.testing.assert_allclose(denoised, log_mel - np.quantile(log_mel, 0.2, axis=1, method="nearest", keepdims=True),
                               atol=1e-5)
    hum_band = features(hum)[0][0].mean(axis=1).argmax()
    assert np.median(np.abs(denoised[hum_band])) < 1.0  # the steady hum reads ~0 dB above its floor
    burst_band = log_mel[:, SR // 320 + 5].argmax()
    assert denoised[burst_band, SR // 320 + 5] > 30  # the event stands far above its band's floor
    # a microphone's colouring (a constant offset per band) changes nothing; the log-mel it moves
    coloured = torch.from_numpy(log_mel)[None, None] + torch.linspace(-12, 12, 64)[None, None, :, None]
    np.testing.assert_allclose(FloorSubtracted()(coloured)[0, 0].numpy(), denoised, atol=1e-4)


def test_denoised_channel_of_a_padded_batch_equals_each_clip_alone():
    rng = np.random.default_rng(4)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) * np.linspace(0, 1, n, dtype=np.float32) for n in (16000, 7000)]
    frontend = FrontEnd(AudioConfig(sample_rate=SR), FeatureConfig(channels=["logmel", "denoised"])).eval()
    batch = torch.zeros(2, 16000)
    batch[1, :7000] = torch.from_numpy(clips[1])
    batch[0] = torch.from_numpy(clips[0])
    with torch.no_grad():
        together = frontend(batch, torch.tensor([16000, 7000]))
        alone = frontend(torch.from_numpy(clips[1])[None])
    frames = 1 + 7000 // 320
    np.testing.assert_allclose(together[1, :, :, :frames], alone[0], atol=1e-4)
    assert not together[1, 1, :, frames:].any()


@pytest.mark.parametrize("channel", ["logmel", "mfcc", "chroma", "cqt", "phase", "freqpos", "denoised", "pcen"])
def test_every_channel_is_the_same_bits_whatever_the_thread_count(channel):
    # The cache holds one entry per content: a pool worker (one thread) and an in-process build
    # (all cores) must write the same bits. MKL splits one long FFT differently over 2 threads.
    y = np.random.default_rng(5).normal(0, 0.1, 10 * SR).astype(np.float32)
    frontend = FrontEnd(AudioConfig(sample_rate=SR), FeatureConfig(channels=[channel], deltas=channel == "logmel")).eval()
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(compute_features(y, frontend))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(*results)


def test_waveform_frames_hold_the_samples_on_the_log_mel_grid():
    y = np.random.default_rng(1).normal(0, 0.1, 1000).astype(np.float32)
    x, _ = features(y, kind="waveform")
    assert x.shape == (1, 320, 1 + 1000 // 320)
    flat = x[0].T.reshape(-1)
    np.testing.assert_array_equal(flat[:1000], y)
    assert not flat[1000:].any()


@pytest.mark.parametrize("overrides, message", [
    (["features.channels=[mfcc,mfcc]"], "twice"),
    (["features.channels=[]"], "empty"),
    (["features.channels=[mfcc]", "features.deltas=true"], "needs logmel"),
    (["features.channels=[cqt]", "features.cqt_fmin=200"], "Nyquist"),
    (["features.kind=waveform"], "wavecnn"),
    (["model.name=wavecnn"], "wavecnn"),
    (["features.kind=waveform", "model.name=wavecnn", "features.deltas=true"], "waveform takes no"),
    (["features.channels=[mfc]"], "mfcc"),
])
def test_channel_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("extra", [
    ["features.channels=[logmel,mfcc,chroma,cqt,phase,freqpos,denoised,pcen]", "features.deltas=true", "model.name=crnn",
     "model.rnn_hidden=8", "model.rnn_layers=1", "model.pooling=attention"],
    ["features.kind=waveform", "model.name=wavecnn"],
])
def test_every_channel_set_and_model_family_trains_and_predicts(demo_data, tmp_path, extra):
    from test_train import train_tiny

    run = train_tiny(demo_data, tmp_path / "run", tmp_path / "cache", "train.epochs=1", *extra)
    scores = run.scores
    assert 0 < scores["oof_lwlrap"] <= 1 and 0 < scores["test_lwlrap"] <= 1
    assert run.config.features.channels == load_config(None, extra).features.channels  # saved, resolved
    uniform = "crop starts are drawn uniformly" in (run.dir / "log.txt").read_text()
    assert uniform == (run.config.features.kind == "waveform")  # no dB channel to weigh crops by, and it says so
