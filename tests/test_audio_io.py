import io

import numpy as np
import pytest
import soundfile as sf

from audiotag.audio.io import decode, load_audio, resample, to_mono, trim_silence
from audiotag.errors import AudioError

SR = 16000


def wav_bytes(y, sr=SR, subtype="PCM_16", fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, y, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def noise(n=SR, channels=1, seed=0):
    y = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    return y[:, 0] if channels == 1 else y


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("PCM_16", 2), ("FLOAT", 1), ("FLOAT", 3),
                                                ("PCM_24", 1), ("PCM_32", 2), ("PCM_U8", 1)])
def test_decoded_samples_equal_libsndfile(subtype, channels):
    data = wav_bytes(noise(channels=channels), subtype=subtype)
    y, sr, info = decode(data, name="x.wav")
    expected, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert sr == SR and info.channels == channels and info.frames == SR
    np.testing.assert_array_equal(y, expected)
    assert info.peak_dbfs == 20 * np.log10(float(np.abs(expected).max()))  # whichever way it was found


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_compressed_formats(fmt, subtype):
    t = np.arange(SR) / SR
    y, sr, info = decode(wav_bytes(0.5 * np.sin(2 * np.pi * 440 * t), subtype=subtype, fmt=fmt), name="x")
    assert info.container == fmt and sr == SR and abs(len(y) - SR) < 2048


def test_truncated_wav_is_reported_with_how_much_is_missing():
    data = wav_bytes(noise())
    with pytest.raises(AudioError) as info:
        decode(data[: len(data) // 4], name="cut.wav")
    assert info.value.code == "truncated" and "cut.wav" in str(info.value) and "%" in str(info.value)


@pytest.mark.parametrize("data, code", [
    (b"", "empty"),
    (b"hello, this is a text file\n", "unreadable"),
    (b"\x00\x01\x02\x03" * 100, "unreadable"),
])
def test_not_audio(data, code):
    with pytest.raises(AudioError) as info:
        decode(data, name="bad.wav")
    assert info.value.code == code and "bad.wav" in str(info.value) and info.value.hint


def test_truncated_flac_is_corrupt_or_truncated():
    data = wav_bytes(noise(4 * SR), fmt="FLAC")
    with pytest.raises(AudioError) as info:
        decode(data[: len(data) // 2], name="cut.flac")
    assert info.value.code in ("corrupt", "truncated")


def test_zero_frames_silence_and_nonfinite():
    with pytest.raises(AudioError) as info:
        decode(wav_bytes(np.zeros(0, np.float32)), name="a.wav")
    assert info.value.code == "zero-length"
    with pytest.raises(AudioError) as info:
        decode(wav_bytes(np.zeros(SR, np.float32)), name="b.wav")
    assert info.value.code == "silent"
    y = noise()
    y[100] = np.nan
    with pytest.raises(AudioError) as info:
        decode(wav_bytes(y, subtype="FLOAT"), name="c.wav")
    assert info.value.code == "nonfinite" and "1 samples" in str(info.value)
    y = noise()
    y[5] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode(wav_bytes(y, subtype="DOUBLE"), name="d.wav")


def test_one_lsb_of_dither_counts_as_silent_but_quiet_audio_does_not():
    lsb = np.zeros(SR, np.float32)
    lsb[::7] = 1 / 32768
    with pytest.raises(AudioError, match="silent"):
        decode(wav_bytes(lsb), name="x.wav")
    y, _, info = decode(wav_bytes(noise() * 0.01), name="quiet.wav")
    assert -50 < info.peak_dbfs < -30


def test_downmix_averages_channels():
    y = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32) * 0.5], axis=1)
    np.testing.assert_allclose(to_mono(y), 0.25)
    assert to_mono(y[:, :1]).shape == (10,)


@pytest.mark.parametrize("sr_in", [8000, 44100, 96000])
def test_resampling_keeps_a_tone_at_its_frequency(sr_in):
    t = np.arange(sr_in) / sr_in
    y = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(y, sr_in=sr_in, sr_out=SR)
    assert abs(len(out) - SR) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert abs(np.argmax(spectrum) * SR / len(out) - 1000) < 2


def test_trim_cuts_leading_and_trailing_silence_only():
    y = np.concatenate([np.zeros(SR), noise(SR // 2), np.zeros(SR)]).astype(np.float32)
    out = trim_silence(y, top_db=60, frame_length=2048, hop_length=512)
    assert SR // 2 <= len(out) <= SR // 2 + 2 * 2048  # at most one frame of margin each side
    assert np.count_nonzero(out) == np.count_nonzero(y)  # none of the sound is cut


def test_load_audio_resamples_and_downmixes(tmp_path):
    path = tmp_path / "stereo48k.wav"
    sf.write(path, noise(48000, channels=2), 48000, subtype="PCM_24")
    y, info = load_audio(path, sample_rate=SR)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(len(y) - SR) <= 1
    assert (info.sample_rate, info.channels) == (48000, 2)
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav", sample_rate=SR)


@pytest.mark.parametrize("peak, ok", [(0.9, True), (4.0, True), (999.0, True), (1e4, False), (1e30, False)])
def test_float_samples_far_above_full_scale_are_refused(peak, ok):
    # +60 dBFS is the limit: floats a little over 1.0 are ordinary, 1e30 is garbage whose squares overflow
    y = noise() * (peak / np.abs(noise()).max())
    if ok:
        decode(wav_bytes(y.astype(np.float32), subtype="FLOAT"), name="loud.wav")
        return
    with pytest.raises(AudioError) as info:
        decode(wav_bytes(y.astype(np.float32), subtype="FLOAT"), name="loud.wav")
    assert info.value.code == "absurd-level" and "above full scale" in str(info.value)
    assert "loud.wav" in str(info.value) and info.value.hint
