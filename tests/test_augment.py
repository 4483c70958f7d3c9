import numpy as np
import pytest
import torch

from audiotag.augment import Gain, Mixup, SpecAugment, TimeShift, build_transforms
from audiotag.augment.spec import FreqMixStyle, FreqShift, RandomEQ, ResizedCrop, SpecMix, TimeStretch
from audiotag.config import AugmentConfig


def batch(seed=0, b=6, f=16, t=40, k=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, f, t, generator=g)
    y = torch.zeros(b, k)
    y[torch.arange(b), torch.arange(b) % k] = 1
    return x, y


TRANSFORMS = {
    "shift": lambda s: TimeShift(seed=s),
    "gain": lambda s: Gain(max_db=6.0, seed=s),
    "masks": lambda s: SpecAugment(time_masks=2, time_mask_frames=10, freq_masks=2, freq_mask_bins=4, seed=s),
    "mixup": lambda s: Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=s),
    "mixup_three": lambda s: Mixup(alpha=1.0, prob=0.7, targets="or", seed=s, domain="power", sources=3),
    "eq": lambda s: RandomEQ(max_db=6.0, seed=s),
    "freq_shift": lambda s: FreqShift(max_bins=3, seed=s),
    "stretch": lambda s: TimeStretch(max_change=0.25, seed=s),
    "resized_crop": lambda s: ResizedCrop(min_scale=0.6, seed=s),
    "resized_crop_some": lambda s: ResizedCrop(min_scale=0.6, prob=0.5, seed=s),
    "resized_crop_bands": lambda s: ResizedCrop(min_scale=0.6, axes="bands", seed=s),
    "resized_crop_time": lambda s: ResizedCrop(min_scale=0.6, axes="time", seed=s),
    "resized_crop_out": lambda s: ResizedCrop(min_scale=0.8, max_scale=1.25, prob=0.5, seed=s),
    "freq_mixstyle": lambda s: FreqMixStyle(prob=1.0, alpha=0.3, seed=s),
    "specmix": lambda s: SpecMix(prob=1.0, seed=s),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_changes_its_input_and_never_mutates_it(name):
    x, y = batch()
    x0, y0 = x.clone(), y.clone()
    x2, y2 = TRANSFORMS[name](1)(x, y)
    assert x2.shape == x.shape and y2.shape == y.shape
    assert not torch.equal(x2, x)
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_same_seed_same_result_and_state_resumes(name):
    x, y = batch()
    a, b = TRANSFORMS[name](3), TRANSFORMS[name](3)
    assert torch.equal(a(x, y)[0], b(x, y)[0])
    saved = a.state_dict()
    first = a(x, y)[0]
    a.load_state_dict(saved)
    assert torch.equal(a(x, y)[0], first)
    assert not torch.equal(first, TRANSFORMS[name](4)(x, y)[0]) or name.startswith("mixup")


def test_time_shift_is_a_circular_roll():
    x, y = batch()
    t = TimeShift(seed=0)
    params = t.sample(x)
    out, _ = t.apply(x, y, params)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], torch.roll(x[i], int(params["shift"][i]), dims=-1))


def test_gain_adds_a_bounded_constant_per_clip():
    x, y = batch()
    out, _ = Gain(max_db=3.0, seed=0)(x, y)
    offset = (out - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset)) and offset.abs().max() <= 3.0


def test_eq_adds_a_smooth_bounded_curve_per_clip_constant_in_time():
    x, y = batch()
    out, _ = RandomEQ(max_db=6.0, seed=0)(x, y)
    curve = out - x  # (B, 1, F, T)
    torch.testing.assert_close(curve, curve[..., :1].expand_as(curve))  # the same in every frame
    assert curve.abs().max() <= 6.0 * 1.5 / 2 + 1e-5  # three terms of at most max_db / 2
    steps = curve[:, 0, 1:, 0] - curve[:, 0, :-1, 0]
    assert steps.abs().max() < 6.0 / 16 * 4  # smooth: no jumps between neighbouring bands


def test_freq_shift_moves_bands_and_repeats_the_edge():
    x, y = batch()
    t = FreqShift(max_bins=3, seed=0)
    params = {"shift": torch.tensor([2, -1, 0, 3, -3, 1])}
    out, _ = t.apply(x, y, params)
    torch.testing.assert_close(out[0, :, 2:], x[0, :, :-2])
    torch.testing.assert_close(out[0, :, 0], x[0, :, 0])
    torch.testing.assert_close(out[0, :, 1], x[0, :, 0])
    torch.testing.assert_close(out[1, :, :-1], x[1, :, 1:])
    torch.testing.assert_close(out[2], x[2])
    assert set(t.sample(torch.zeros(500, 1, 8, 2))["shift"].tolist()) == set(range(-3, 4))


def test_time_stretch_reads_frames_at_its_rate_with_interpolation_and_wraps():
    t = torch.arange(40, dtype=torch.float32)
    x = torch.stack([torch.sin(t / 3), t, t, torch.cos(t / 5)])[:, None, None, :].expand(4, 1, 3, 40)
    y = torch.zeros(4, 2)
    out, _ = TimeStretch(max_change=0.5, seed=0).apply(x, y, {"rate": torch.tensor([1.0, 0.5, 1.5, 1.25])})
    torch.testing.assert_close(out[0], x[0])  # rate 1: unchanged
    torch.testing.assert_close(out[1, 0, 0], t / 2)  # half speed: every frame twice, halfway values between
    torch.testing.assert_close(out[2, 0, 0, :26], t[:26] * 1.5)  # 1.5x: frames 0, 1.5, 3, ... up to 37.5
    assert out[2, 0, 0, 27] == 0.5  # frame 40.5 wraps to 0.5
    torch.testing.assert_close(out[3, 0, 0], torch.cos((t * 1.25 % 40).floor() / 5) * (1 - (t * 1.25) % 1)
                               + torch.cos(((t * 1.25).floor() + 1) % 40 / 5) * ((t * 1.25) % 1))
    rates = TimeStretch(max_change=0.25, seed=0).sample(torch.zeros(2000, 1, 2, 2))["rate"]
    assert 1 / 1.25 - 1e-6 <= rates.min() < 0.82 and 1.23 < rates.max() <= 1.25 + 1e-6
    assert abs(torch.log(rates).mean()) < 0.02  # log-uniform: as much faster as slower


def test_masks_cover_spans_with_the_clip_mean():
    x, y = batch()
    t = SpecAugment(time_masks=1, time_mask_frames=10, freq_masks=0, freq_mask_bins=0, seed=0)
    params = t.sample(x)
    out, _ = t.apply(x, y, params)
    changed = (out != x).any(dim=2)[:, 0]  # (B, T): masked frames
    assert changed.sum(1).max() <= 10
    for i in range(len(x)):
        if changed[i].any():
            assert torch.allclose(out[i, 0, :, changed[i]], x[i].mean().expand(16, int(changed[i].sum())))


def pair(lam, perm):
    """Mixup parameters that mix each clip with one partner, ``perm``, at weight ``lam``."""
    return {"lam": torch.tensor(lam), "perms": torch.as_tensor(perm)[None], "split": torch.ones(1, len(lam))}


def test_mixup_targets_weighted_and_or():
    x, y = batch()
    weighted = Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=0)
    params = weighted.sample(x)
    mx, my = weighted.apply(x, y, params)
    lam, perm = params["lam"], params["perms"][0]
    torch.testing.assert_close(my, lam[:, None] * y + (1 - lam[:, None]) * y[perm])
    torch.testing.assert_close(mx, lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm])
    assert torch.allclose(my.sum(1), torch.ones(len(y)))
    _, oy = Mixup(alpha=0.4, prob=1.0, targets="or", seed=0).apply(x, y, params)
    torch.testing.assert_close(oy, torch.maximum(y, y[perm]))


def test_power_domain_mixup_adds_the_two_sounds_powers():
    x, y = batch()
    x = x * 10 - 40  # dB-like values
    t = Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=0, domain="power")
    params = t.sample(x)
    mx, _ = t.apply(x, y, params)
    lam, perm = params["lam"], params["perms"][0]
    expected = 10 * np.log10(lam.numpy()[:, None, None, None] * 10 ** (x.numpy() / 10)
                             + (1 - lam.numpy()[:, None, None, None]) * 10 ** (x[perm].numpy() / 10))
    np.testing.assert_allclose(mx.numpy(), expected, rtol=1e-4, atol=1e-3)
    # a loud sound mixed with a much quieter one keeps (about) the loud one's level
    loud, quiet = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -60.0)
    both = torch.cat([loud, quiet])
    out, _ = t.apply(both, torch.eye(2), pair([0.5, 0.5], [1, 0]))
    assert abs(float(out[0]) - 10 * np.log10(0.5)) < 0.01


def test_power_domain_mixup_mixes_only_db_channels_as_powers_and_a_waveform_by_power():
    x, y = batch()
    x = torch.cat([x * 10 - 40, x], dim=1)  # channel 0 in dB, channel 1 e.g. a delta
    params = pair([0.25] * len(x), torch.roll(torch.arange(len(x)), 1))
    t = Mixup(alpha=1.0, prob=1.0, targets="or", seed=0, domain="power", db_channels=[True, False])
    mx, _ = t.apply(x, y, params)
    p = 10 ** (x[:, :1].double() / 10)
    expected_db = 10 * torch.log10(0.25 * p + 0.75 * p[params["perms"][0]])
    torch.testing.assert_close(mx[:, :1].double(), expected_db, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(mx[:, 1:], 0.25 * x[:, 1:] + 0.75 * x[params["perms"][0], 1:])
    # a waveform: independent noises mixed at lam keep lam of one power and 1 - lam of the other
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 1, 1, 200_000, generator=g) * torch.tensor([1.0, 3.0])[:, None, None, None]
    w = Mixup(alpha=1.0, prob=1.0, targets="or", seed=0, domain="power", waveform=True)
    mixed, _ = w.apply(wave, torch.eye(2), pair([0.25, 1.0], [1, 0]))
    assert float(mixed[0].pow(2).mean()) == pytest.approx(0.25 * 1 + 0.75 * 9, rel=0.02)
    assert torch.equal(mixed[1], wave[1])  # lam = 1: untouched


def test_mixup_of_three_sources_adds_three_powers_and_unites_their_labels():
    x, y = batch(b=400, f=2, t=3, k=4)
    x = x * 10 - 40
    t = Mixup(alpha=1.0, prob=0.5, targets="or", seed=0, domain="power", sources=3)
    params = t.sample(x)
    lam, perms, split = params["lam"], params["perms"], params["split"]
    assert perms.shape == (2, 400) and split.shape == (2, 400)
    joined = (split > 0).sum(0)
    # each partner joins at prob: none / one / both partners ~ 1/4, 1/2, 1/4 of the clips
    np.testing.assert_allclose([(joined == n).float().mean() for n in range(3)], [0.25, 0.5, 0.25], atol=0.07)
    assert torch.equal(lam == 1, joined == 0)
    torch.testing.assert_close(split[:, joined > 0].sum(0), torch.ones(int((joined > 0).sum())))
    # all three join: Dirichlet(1, 1, 1), the clip's own weight averages 1/3
    assert abs(float(lam[joined == 2].mean()) - 1 / 3) < 0.06
    mx, my = t.apply(x, y, params)
    weights = torch.stack([lam, (1 - lam) * split[0], (1 - lam) * split[1]])[:, :, None, None, None]
    sources = torch.stack([x, x[perms[0]], x[perms[1]]])
    expected = 10 * torch.log10((weights * 10 ** (sources / 10)).sum(0))
    torch.testing.assert_close(mx[joined > 0], expected[joined > 0], rtol=1e-4, atol=1e-3)
    assert torch.equal(mx[joined == 0], x[joined == 0]) and torch.equal(my[joined == 0], y[joined == 0])
    expected_y = torch.maximum(y, torch.where((split[0] > 0)[:, None], y[perms[0]], 0))
    expected_y = torch.maximum(expected_y, torch.where((split[1] > 0)[:, None], y[perms[1]], 0))
    torch.testing.assert_close(my, expected_y)
    _, wy = Mixup(alpha=1.0, prob=0.5, targets="weighted", seed=0, sources=3).apply(x, y, params)
    torch.testing.assert_close(wy.sum(1), torch.ones(len(y)))
    mixup = next(m for m in build_transforms(AugmentConfig(mixup_sources=3), seed=0) if isinstance(m, Mixup))
    assert mixup.sources == 3


def test_mixup_probability_zero_is_identity_and_config_switches_parts_off():
    x, y = batch()
    mx, my = Mixup(alpha=0.4, prob=0.0, targets="weighted", seed=0)(x, y)
    assert torch.equal(mx, x) and torch.equal(my, y)
    off = AugmentConfig(mixup_alpha=0, time_masks=0, freq_masks=0, gain_db=0, time_shift=False, resized_crop_prob=0)
    assert build_transforms(off, seed=0) == []
    names = [type(t).__name__ for t in build_transforms(AugmentConfig(eq_db=3, freq_shift_bins=2, time_stretch=0.2),
                                                       seed=0)]
    assert names == ["TimeShift", "Gain", "RandomEQ", "FreqShift", "TimeStretch", "ResizedCrop", "SpecAugment",
                     "Mixup"]
    names = [type(t).__name__ for t in build_transforms(AugmentConfig(mixup_alpha=0), seed=0)]
    assert names == ["TimeShift", "Gain", "ResizedCrop", "SpecAugment"]
    crop = next(t for t in build_transforms(AugmentConfig(), seed=0) if isinstance(t, ResizedCrop))
    assert (crop.min_scale, crop.max_scale, crop.prob) == (0.8, 1.25, 0.33)  # FAT2019's first place's share, zooming out too


def test_gain_and_eq_move_only_the_db_channels_and_a_waveform_is_scaled():
    x = torch.randn(4, 3, 16, 20)
    channels = ["logmel", "mfcc", "cqt"]
    for transform in (Gain(max_db=6.0, seed=0, db_channels=[c in ("logmel", "cqt") for c in channels]),
                      RandomEQ(max_db=6.0, seed=0, db_channels=[c in ("logmel", "cqt") for c in channels])):
        out, _ = transform(x, torch.zeros(4, 2))
        assert torch.equal(out[:, 1], x[:, 1])
        assert not torch.allclose(out[:, 0], x[:, 0]) and not torch.allclose(out[:, 2], x[:, 2])
    wave = torch.randn(4, 1, 320, 10)
    gain = Gain(max_db=6.0, seed=0, linear=True)
    params = gain.sample(wave)
    out, _ = gain.apply(wave, torch.zeros(4, 2), params)
    torch.testing.assert_close(out, wave * 10 ** (params["db"][:, None, None, None] / 20))
    names = [type(t).__name__ for t in build_transforms(AugmentConfig(eq_db=3.0, freq_shift_bins=2, time_stretch=0.2),
                                                       seed=0, channels=["waveform"])]
    assert "RandomEQ" not in names and "FreqShift" not in names and "TimeStretch" not in names
    masks = [t for t in build_transforms(AugmentConfig(), seed=0, channels=["waveform"]) if isinstance(t, SpecAugment)]
    assert masks and masks[0].freq_masks == 0  # bands of a framed waveform are samples, not frequencies


def test_resized_crop_zooms_into_the_chosen_part_by_bilinear_interpolation():
    f, t = 16, 40
    bands = torch.arange(f, dtype=torch.float32)[:, None].expand(f, t)
    frames = torch.arange(t, dtype=torch.float32)[None, :].expand(f, t)
    x = torch.stack([bands, frames])[None].repeat(2, 1, 1, 1)  # channel 0 counts bands, channel 1 frames
    crop = ResizedCrop(min_scale=0.5, seed=0)
    params = {"scale": torch.tensor([[0.5, 0.75], [1.0, 1.0]]), "centre": torch.tensor([[0.2, -0.1], [0.0, 0.0]])}
    out, y = crop.apply(x, torch.eye(2), params)
    assert torch.equal(y, torch.eye(2))

    def source(pos, n, scale, centre):  # the input index output index `pos` reads (align_corners=False)
        return ((scale * ((2 * pos + 1) / n - 1) + centre) + 1) * n / 2 - 0.5

    j, i = torch.arange(t, dtype=torch.float32), torch.arange(f, dtype=torch.float32)
    torch.testing.assert_close(out[0, 1, 5], source(j, t, 0.5, 0.2).clamp(0, t - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 0, :, 7], source(i, f, 0.75, -0.1).clamp(0, f - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-4, rtol=0)  # scale 1, centred: the crop itself
    drawn = crop.sample(x)
    assert ((drawn["scale"] >= 0.5) & (drawn["scale"] <= 1)).all()
    assert (drawn["centre"].abs() <= 1 - drawn["scale"] + 1e-6).all()  # the window stays inside the crop


def test_resized_crop_zooming_out_shrinks_the_crop_into_a_floor_of_its_quietest_value():
    f, t = 16, 40
    ramp = torch.arange(f, dtype=torch.float32)[:, None] * 2 + torch.arange(t, dtype=torch.float32)[None, :]
    x = torch.stack([ramp - 80, -ramp])[None]  # two channels, each with its own quietest value
    crop = ResizedCrop(min_scale=0.8, max_scale=1.25, seed=0)
    out, _ = crop.apply(x, torch.eye(1), {"scale": torch.tensor([[1.25, 1.25]]), "centre": torch.tensor([[0.0, 0.0]])})
    floor = x.amin(dim=(2, 3))[0]
    # a window 1.25x the crop: its outer tenth on each side lies beyond the crop and reads the floor
    for c in range(2):
        assert torch.equal(out[0, c, :, :2], floor[c].expand(f, 2)) and torch.equal(out[0, c, :, -2:], floor[c].expand(f, 2))
        assert torch.equal(out[0, c, :1], floor[c].expand(1, t)) and torch.equal(out[0, c, -1:], floor[c].expand(1, t))
    # inside, the crop shrunk by bilinear interpolation: on a ramp, the ramp at the source position
    src_i = ((1.25 * ((2 * torch.arange(f) + 1) / f - 1)) + 1) * f / 2 - 0.5
    src_j = ((1.25 * ((2 * torch.arange(t) + 1) / t - 1)) + 1) * t / 2 - 0.5
    rows, cols = (src_i >= 0) & (src_i <= f - 1), (src_j >= 0) & (src_j <= t - 1)
    expected = src_i[rows][:, None] * 2 + src_j[cols][None, :] - 80
    torch.testing.assert_close(out[0, 0][rows][:, cols], expected, atol=1e-3, rtol=0)
    drawn = crop.sample(torch.zeros(2000, 1, f, t))
    scale, centre = drawn["scale"], drawn["centre"]
    assert ((scale >= 0.8) & (scale <= 1.25)).all() and (scale > 1).float().mean() > 0.5  # 1 to 1.25 is 5/9 of the range
    assert (centre.abs() <= (1 - scale).abs() + 1e-6).all()  # zoomed out, the crop stays inside the window
    cfg = AugmentConfig(resized_crop_min=1.0, resized_crop_max=1.2)
    assert [t.max_scale for t in build_transforms(cfg, seed=0) if isinstance(t, ResizedCrop)] == [1.2]


@pytest.mark.parametrize("axes", ["time", "bands"])
def test_resized_crop_along_one_axis_keeps_the_other_and_the_random_stream(axes):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 40, generator=g), torch.eye(8)
    moved, kept = (0, 1) if axes == "time" else (1, 0)  # params' columns: [time, bands]
    both, one = ResizedCrop(min_scale=0.6, seed=0), ResizedCrop(min_scale=0.6, axes=axes, seed=0)
    drawn, drawn_one = both.sample(x), one.sample(x)
    torch.testing.assert_close(drawn_one["scale"][:, moved], drawn["scale"][:, moved])  # the same draws
    torch.testing.assert_close(drawn_one["centre"][:, moved], drawn["centre"][:, moved])
    assert (drawn_one["scale"][:, kept] == 1).all() and (drawn_one["centre"][:, kept] == 0).all()
    out, _ = one.apply(x, y, drawn_one)
    # each band (time zoom) or frame (band zoom) is resampled alone, the same as in a crop one band or frame wide
    for i in (0, 7, 15):
        part = x[:, :, i:i + 1] if axes == "time" else x[:, :, :, i:i + 1]
        alone, _ = ResizedCrop(min_scale=0.6, seed=0).apply(part, y, drawn_one)
        torch.testing.assert_close(out[:, :, i:i + 1] if axes == "time" else out[:, :, :, i:i + 1], alone)
    assert not torch.allclose(out, x)
    cfg = AugmentConfig(resized_crop_axes=axes)
    assert [t.axes for t in build_transforms(cfg, seed=0) if isinstance(t, ResizedCrop)] == [axes]


def test_resized_crop_on_a_share_of_crops_leaves_the_others_untouched():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 1, 16, 40, generator=g), torch.eye(400)
    crop = ResizedCrop(min_scale=0.6, prob=0.33, seed=0)
    out, _ = crop(x, y)
    same = torch.tensor([torch.equal(a, b) for a, b in zip(out, x)])
    assert 0.27 < 1 - same.float().mean() < 0.39  # about a third zoomed, the rest bit-identical
    redo = ResizedCrop(min_scale=0.6, prob=0.33, seed=0)
    params = redo.sample(x)
    every = {k: v for k, v in params.items() if k != "use"}  # the same draws, applied to every crop
    torch.testing.assert_close(out[~same], ResizedCrop(min_scale=0.6, seed=0).apply(x, y, every)[0][~same])
    assert same.tolist() == (~params["use"]).tolist()
    # with every crop zoomed, the random stream is the one of the runs before the option existed
    assert set(ResizedCrop(min_scale=0.6, seed=0).sample(x)) == {"scale", "centre"}
    off = [type(t).__name__ for t in build_transforms(AugmentConfig(resized_crop_min=0.8, resized_crop_prob=0), seed=0)]
    assert "ResizedCrop" not in off


def test_freq_mixstyle_gives_each_band_the_mixed_statistics_and_keeps_targets():
    g = torch.Generator().manual_seed(0)
    b, c, f, t = 3, 2, 8, 400
    mean = torch.randn(b, 1, f, 1, generator=g) * 10
    spread = torch.rand(b, 1, f, 1, generator=g) * 3 + 0.5
    x = torch.randn(b, c, f, t, generator=g) * spread + mean
    mix = FreqMixStyle(prob=1.0, alpha=0.3, seed=0)
    lam, perm = torch.tensor([0.3, 1.0, 0.8]), torch.tensor([1, 2, 0])
    y = torch.eye(3)
    out, out_y = mix.apply(x, y, {"lam": lam, "perm": perm})
    assert torch.equal(out_y, y) and torch.equal(out[1], x[1])  # lam = 1: untouched
    m, s = x.mean(dim=(1, 3), keepdim=True), x.std(dim=(1, 3), unbiased=False, keepdim=True)
    w = lam[:, None, None, None]
    torch.testing.assert_close(out.mean(dim=(1, 3), keepdim=True), w * m + (1 - w) * m[perm], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 3), unbiased=False, keepdim=True), w * s + (1 - w) * s[perm],
                               atol=1e-3, rtol=1e-3)
    never = FreqMixStyle(prob=0.0, alpha=0.3, seed=0)
    assert torch.equal(never(x, y)[0], x)


def test_specmix_takes_the_other_crops_stripes_and_weights_targets_by_area():
    b, f, t = 4, 16, 40
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 2, f, t).clone()  # crop i is all i
    y = torch.eye(b)
    mix = SpecMix(prob=1.0, seed=0)
    params = mix.sample(x)
    out, out_y = mix.apply(x, y, params)
    mask, perm = params["mask"], params["perm"]
    for i in range(b):
        rows, cols = mask[i].all(dim=1), mask[i].all(dim=0)  # the bands taken whole
        # whole stripes: the union of 1-3 bands of rows and 1-3 of columns, each at most an eighth + 1
        assert torch.equal(mask[i], rows[:, None] | cols[None, :])
        assert 0 < rows.sum() <= 3 * (f // 8 + 1) and 0 < cols.sum() <= 3 * (t // 8 + 1)
        assert torch.equal(out[i], torch.where(mask[i], float(perm[i]), float(i)).expand(2, f, t))
        share = mask[i].float().mean()
        expected = (1 - share) * y[i] + share * y[perm[i]]
        torch.testing.assert_close(out_y[i], expected)
    torch.testing.assert_close(out_y.sum(dim=1), torch.ones(b))  # weights add up to one
    never = SpecMix(prob=0.0, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(never(x, y), (x, y)))


def test_config_switches_the_resized_crop_and_freq_mixstyle_on():
    names = [type(t).__name__ for t in build_transforms(
        AugmentConfig(resized_crop_min=0.8, freq_mixstyle_prob=0.5, specmix_prob=0.3), seed=0)]
    assert names == ["TimeShift", "Gain", "ResizedCrop", "FreqMixStyle", "SpecMix", "SpecAugment", "Mixup"]
    wave = [type(t).__name__ for t in build_transforms(
        AugmentConfig(resized_crop_min=0.8, freq_mixstyle_prob=0.5, specmix_prob=0.3), seed=0, channels=["waveform"])]
    assert "ResizedCrop" not in wave and "FreqMixStyle" not in wave and "SpecMix" not in wave
