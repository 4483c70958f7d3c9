import threading

import numpy as np
import pytest
import torch

from audiotag.data.folds import make_folds
from audiotag.data.layouts import load_dataset
from audiotag.errors import DataError
from audiotag.features.bank import ClipBank
from audiotag.inference.predict import window_starts
from audiotag.training.batches import CropSampler, class_balanced_weights, prefetch


def bank(lengths=(50, 12, 30), k=3):
    arrays = [np.arange(n, dtype=np.float16)[None, None, :].repeat(4, axis=1) + 100 * i for i, n in enumerate(lengths)]
    targets = np.eye(len(lengths), k, dtype=np.float32)
    return ClipBank(arrays, targets)


def test_pieces_of_long_and_short_clips():
    b = bank()
    np.testing.assert_array_equal(b.piece(0, 10, 20)[0, 0], np.arange(10, 30))
    wrapped = b.piece(1, 5, 20, pad_mode="wrap")[0, 0]
    np.testing.assert_array_equal(wrapped, 100 + (np.arange(5, 25) % 12))
    constant = b.piece(1, 3, 20, pad_mode="constant")[0, 0]
    np.testing.assert_array_equal(constant[3:15], 100 + np.arange(12))
    assert (constant[:3] == 100).all() and (constant[15:] == 100).all()  # the clip's floor value
    assert b.piece(0, 0, 20).dtype == np.float32


def test_sampler_is_a_pure_function_of_seed_stream_and_epoch():
    b = bank(lengths=(50, 12, 30, 44, 61, 20))
    b.targets = np.eye(6, 3, dtype=np.float32)
    s = CropSampler(b, crop_frames=16, batch_size=2, seed=1)
    first = [x for x, _ in s.epoch(0)]
    again = [x for x, _ in CropSampler(b, crop_frames=16, batch_size=2, seed=1).epoch(0)]
    other = [x for x, _ in s.epoch(1)]
    assert len(first) == 3 and all(x.shape == (2, 1, 4, 16) for x in first)
    assert all(torch.equal(a, c) for a, c in zip(first, again))
    assert not all(torch.equal(a, c) for a, c in zip(first, other))
    stream = [x for x, _ in CropSampler(b, crop_frames=16, batch_size=2, seed=1, stream=1).epoch(0)]
    assert not all(torch.equal(a, c) for a, c in zip(first, stream))


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_crop_energy_draws_starts_in_proportion_to_the_crops_power(power):
    n, crop, copies = 100, 16, 400
    db = np.full((4, n), -60.0)
    db[:, 60:70] = 0.0  # a short event in a long, quiet clip
    db[:2, 20:30] = -10.0  # a fainter one in half the bands
    clip = np.stack([np.tile(np.arange(n, dtype=np.float32), (4, 1)), db])  # channel 0 names the frame
    b = ClipBank([clip] * copies, np.ones((copies, 1), np.float32))
    s = CropSampler(b, crop_frames=crop, batch_size=copies, seed=0, crop_energy=power, energy_channel=1)
    starts = np.concatenate([x[:, 0, 0, 0].numpy() for e in range(25) for x, _ in s.epoch(e)]).astype(int)
    crops = np.array([(10 ** (db[:, t : t + crop] / 10)).mean() for t in range(n - crop + 1)])
    expected = crops**power / (crops**power).sum()
    seen = np.bincount(starts, minlength=n - crop + 1) / len(starts)
    assert len(seen) == n - crop + 1 and np.abs(seen - expected).sum() / 2 < 0.03  # total variation distance
    uniform = CropSampler(b, crop_frames=crop, batch_size=copies, seed=0)
    quiet = np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in uniform.epoch(0)]).astype(int)
    assert ((quiet + crop <= 60) | (quiet >= 70)).mean() > 0.5  # most uniform crops miss the event


def test_crop_energy_is_weighed_on_the_first_channel_in_db():
    from audiotag.config import load_config
    from audiotag.training.cv import crop_weighting

    assert crop_weighting(load_config(None, ["train.crop_energy=0"])) == {}  # off: the sampler's uniform draws
    assert crop_weighting(load_config(None, ["features.channels=[mfcc,chroma]"])) == {}  # nothing to weigh by
    assert crop_weighting(load_config(None, ["features.kind=waveform", "model.name=wavecnn"])) == {}
    assert crop_weighting(load_config(None, [])) == {"crop_energy": 1.0, "energy_channel": 0}
    on = ["train.crop_energy=0.5"]
    assert crop_weighting(load_config(None, on)) == {"crop_energy": 0.5, "energy_channel": 0}
    assert crop_weighting(load_config(None, on + ["features.channels=[mfcc,logmel]"]))["energy_channel"] == 1
    assert crop_weighting(load_config(None, on + ["features.channels=[phase,cqt,logmel]", "features.deltas=true"])
                          )["energy_channel"] == 1


def test_class_balanced_sampling_favours_rare_classes():
    targets = np.zeros((10, 2), dtype=np.float32)
    targets[:9, 0] = 1
    targets[9, 1] = 1
    w = class_balanced_weights(targets)
    assert w.sum() == pytest.approx(1.0) and w[9] == pytest.approx(0.5)


@pytest.mark.parametrize("n, window, hop", [(100, 30, 15), (30, 30, 15), (10, 30, 15), (101, 40, 40), (1000, 200, 100)])
def test_windows_cover_every_frame(n, window, hop):
    starts = window_starts(n, window, hop)
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all() and all(0 <= s <= max(0, n - window) for s in starts)
    assert starts == sorted(set(starts))


@pytest.mark.parametrize("n", [10, 29, 30, 31, 100])
@pytest.mark.parametrize("pad_mode", ["wrap", "constant"])
def test_shifted_windows_are_full_length_for_any_clip_length(n, pad_mode):
    bank = ClipBank([np.arange(n * 2, dtype=np.float32).reshape(1, 2, n)])
    for offset in (0, 1, 7, 15):
        for s in window_starts(n, 30, 15, offset=offset):
            assert bank.piece(0, s, 30, pad_mode=pad_mode).shape == (1, 2, 30), (offset, s)


def test_folds_are_stratified_stable_and_reused(demo_data, cache_dir):
    ds = load_dataset(demo_data)
    clips = ds.split("curated")
    folds = make_folds(ds, clips, n_folds=4, seed=0, cache_dir=cache_dir)
    assert folds.source == "stratified" and sorted(set(folds.fold.values())) == [0, 1, 2, 3]
    y = ds.label_matrix(clips)
    ids = np.array([folds.fold[c.fname] for c in clips])
    per_fold = np.stack([y[ids == k].sum(0) for k in range(4)])
    assert (per_fold.max(0) - per_fold.min(0)).max() <= 2  # every label spread evenly
    cached = list((cache_dir / "folds").glob("*.csv"))
    assert len(cached) == 1
    assert make_folds(ds, clips, n_folds=4, seed=0, cache_dir=cache_dir) == folds
    assert make_folds(ds, clips, n_folds=4, seed=1, cache_dir=cache_dir) != folds
    train, val = folds.indices(clips, 2)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(clips)


def test_a_datasets_own_folds_win(tmp_path):
    from conftest import shared_path

    ds = load_dataset(shared_path("data", "sources", "esc50"), audio=False)
    folds = make_folds(ds, ds.clips, n_folds=5, seed=0)
    assert folds.source == "dataset" and folds.n_folds == 3
    assert all(folds.fold[c.fname] == c.fold - 1 for c in ds.clips)
    with pytest.raises(DataError, match="cannot be split"):
        make_folds(ds, ds.clips[:3], n_folds=5, seed=0, use_dataset_folds=False)


def _bank_sampler():
    rng = np.random.default_rng(0)
    bank = ClipBank([rng.normal(size=(1, 4, n)).astype(np.float32) for n in (5, 9, 12, 3, 20, 7)],
                    (rng.random((6, 3)) > 0.5).astype(np.float32))
    return CropSampler(bank, crop_frames=6, batch_size=2, seed=0)


def test_prefetch_gives_the_same_batches_in_order():
    sampler = _bank_sampler()
    plain, ahead = list(sampler.epoch(3)), list(prefetch(sampler.epoch(3), depth=2))
    assert len(plain) == len(ahead) == 3
    for (x, y), (px, py) in zip(plain, ahead):
        assert torch.equal(x, px) and torch.equal(y, py)


def test_prefetch_raises_the_producer_error_and_stops_when_abandoned():
    def broken():
        yield torch.zeros(1), torch.zeros(1)
        raise ValueError("clip 7 is damaged")

    it = prefetch(broken())
    next(it)
    with pytest.raises(ValueError, match="clip 7"):
        next(it)
    endless = prefetch(((torch.zeros(1), torch.zeros(1)) for _ in iter(int, 1)), depth=1)
    next(endless)
    endless.close()  # the consumer stopped early (e.g. early stopping): the thread must end too
    assert not any(t.name == "audiotag-prefetch" for t in threading.enumerate())
