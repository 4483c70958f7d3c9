"""Training-time augmentation of feature batches ``x: (B, C, F, T)`` with targets ``y: (B, K)``.

Each transform owns a seeded ``torch.Generator``; ``sample`` draws the random parameters and
``apply`` uses them without touching its inputs (audiomentations' randomize/apply split), so a test
can fix the parameters and a checkpoint can save the generator to resume exactly.
"""

from __future__ import annotations

import torch

from ..config import AugmentConfig
from ..features.frontend import DB_CHANNELS


class _Transform:
    def __init__(self, *, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, x: torch.Tensor) -> dict:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Parameters are drawn on the CPU (the generator lives there, so a GPU run draws the same
        # numbers as a CPU run) and moved to the batch's device.
        params = {k: v.to(x.device, non_blocking=True) for k, v in self.sample(x).items()}
        return self.apply(x, y, params)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)


class TimeShift(_Transform):
    """Rolls each crop along time by a random number of frames (the crop wraps around)."""

    def sample(self, x):
        return {"shift": (self._uniform(x.shape[0]) * x.shape[-1]).long()}

    def apply(self, x, y, params):
        t = x.shape[-1]
        idx = (torch.arange(t, device=x.device)[None, :] - params["shift"][:, None]) % t  # (B, T)
        return x.gather(-1, idx[:, None, None, :].expand_as(x)), y


def _channel_mask(channels: list[bool] | None) -> torch.Tensor | None:
    return None if channels is None else torch.tensor(channels, dtype=torch.float32)[None, :, None, None]


class Gain(_Transform):
    """A random gain of up to +-``max_db`` per crop: added to the dB channels (``db_channels``, a
    flag per channel; all when None), or multiplied into a waveform (``linear``)."""

    def __init__(self, *, max_db: float, seed: int, db_channels: list[bool] | None = None, linear: bool = False):
        super().__init__(seed=seed)
        self.max_db, self.mask, self.linear = max_db, _channel_mask(db_channels), linear

    def sample(self, x):
        return {"db": (self._uniform(x.shape[0]) * 2 - 1) * self.max_db}

    def apply(self, x, y, params):
        db = params["db"].to(x.dtype)[:, None, None, None]
        if self.linear:
            return x * torch.pow(10.0, db / 20), y
        return x + (db if self.mask is None else db * self.mask.to(x.device, x.dtype)), y


class SpecAugment(_Transform):
    """Masks ``time_masks`` random spans of up to ``time_mask_frames`` frames and ``freq_masks``
    spans of up to ``freq_mask_bins`` bands with each crop's mean (Park et al., 2019)."""

    def __init__(self, *, time_masks: int, time_mask_frames: int, freq_masks: int, freq_mask_bins: int, seed: int):
        super().__init__(seed=seed)
        self.time_masks, self.time_mask_frames = time_masks, time_mask_frames
        self.freq_masks, self.freq_mask_bins = freq_masks, freq_mask_bins

    def _spans(self, b: int, n: int, size: int, count: int) -> torch.Tensor:
        """``(B, n)`` bool: the union of ``count`` random spans of width 0..size per row."""
        width = (self._uniform(b, count) * (min(size, n) + 1)).long()
        start = (self._uniform(b, count) * (n - width + 1)).long()
        pos = torch.arange(n)[None, None, :]
        return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)

    def sample(self, x):
        b, _, f, t = x.shape
        return {"time": self._spans(b, t, self.time_mask_frames, self.time_masks),
                "freq": self._spans(b, f, self.freq_mask_bins, self.freq_masks)}

    def apply(self, x, y, params):
        mask = params["time"][:, None, None, :] | params["freq"][:, None, :, None]  # (B, 1, F, T)
        fill = x.mean(dim=(2, 3), keepdim=True)  # each channel's own mean
        return torch.where(mask, fill, x), y


class RandomEQ(_Transform):
    """Adds a smooth random curve over the bands to each crop, up to about +-``max_db``: a random
    tilt plus two slow cosines, as a different microphone, room or channel would colour the sound."""

    def __init__(self, *, max_db: float, seed: int, db_channels: list[bool] | None = None):
        super().__init__(seed=seed)
        self.max_db, self.mask = max_db, _channel_mask(db_channels)

    def sample(self, x):
        return {"coef": (self._uniform(x.shape[0], 3) * 2 - 1) * self.max_db / 2, "phase": self._uniform(x.shape[0], 2)}

    def apply(self, x, y, params):
        f = x.shape[2]
        pos = torch.linspace(0, 1, f, device=x.device)[None, :]  # (1, F)
        coef, phase = params["coef"], params["phase"] * 2 * torch.pi
        curve = (coef[:, :1] * (2 * pos - 1) + coef[:, 1:2] * torch.cos(torch.pi * pos + phase[:, :1])
                 + coef[:, 2:3] * torch.cos(2 * torch.pi * pos + phase[:, 1:2]))  # (B, F)
        curve = curve.to(x.dtype)[:, None, :, None]
        return x + (curve if self.mask is None else curve * self.mask.to(x.device, x.dtype)), y


class FreqShift(_Transform):
    """Moves each crop up or down by up to ``max_bins`` bands (a rough pitch change); the bands
    shifted in repeat the edge band."""

    def __init__(self, *, max_bins: int, seed: int):
        super().__init__(seed=seed)
        self.max_bins = max_bins

    def sample(self, x):
        return {"shift": (self._uniform(x.shape[0]) * (2 * self.max_bins + 1)).long() - self.max_bins}

    def apply(self, x, y, params):
        f = x.shape[2]
        idx = (torch.arange(f, device=x.device)[None, :] - params["shift"][:, None]).clamp(0, f - 1)  # (B, F)
        return x.gather(2, idx[:, None, :, None].expand_as(x)), y


class TimeStretch(_Transform):
    """Plays each crop faster or slower by a random factor between ``1 / (1 + max_change)`` and
    ``1 + max_change`` (log-uniform): frames are read at that rate with linear interpolation, the
    crop wrapping around as in :class:`TimeShift`. A new tempo for the same recording."""

    def __init__(self, *, max_change: float, seed: int):
        super().__init__(seed=seed)
        self.max_change = max_change

    def sample(self, x):
        span = torch.log1p(torch.tensor(self.max_change))
        return {"rate": torch.exp((self._uniform(x.shape[0]) * 2 - 1) * span)}

    def apply(self, x, y, params):
        t = x.shape[-1]
        pos = torch.arange(t, device=x.device, dtype=torch.float32)[None, :] * params["rate"][:, None]  # (B, T)
        lo = pos.floor()
        frac = (pos - lo).to(x.dtype)[:, None, None, :]
        lo = lo.long() % t
        index = lo[:, None, None, :].expand_as(x)
        after = ((lo + 1) % t)[:, None, None, :].expand_as(x)
        return torch.lerp(x.gather(-1, index), x.gather(-1, after), frac), y


class ResizedCrop(_Transform):
    """Zooms into a random part of each crop: a share between ``min_scale`` and 1 of its frames and,
    independently, of its bands, at a random place, stretched back to the full size with bilinear
    interpolation (torchvision's RandomResizedCrop on the spectrogram, credited most by FAT2019's
    first-place team, who zoomed into a third of the crops: ``prob``). The sound gets slower and its
    spectrum spreads over more bands, as a different recording of the same source might. ``axes``
    zooms along ``time`` alone (a tempo change) or the ``bands`` alone (a pitch change) instead.
    ``max_scale`` > 1 zooms out as well: a window up to that share of each axis, the part beyond the
    crop filled with the crop's quietest value, so the sound gets faster and lower as often as
    slower and higher."""

    def __init__(self, *, min_scale: float, seed: int, prob: float = 1.0, axes: str = "both", max_scale: float = 1.0):
        super().__init__(seed=seed)
        self.min_scale, self.max_scale, self.prob, self.axes = min_scale, max_scale, prob, axes

    def sample(self, x):
        b = x.shape[0]
        scale = self.min_scale + (self.max_scale - self.min_scale) * self._uniform(b, 2)  # (B, [time, bands])
        centre = (self._uniform(b, 2) * 2 - 1) * (1 - scale)  # the window within the crop, or the crop within it
        if self.axes != "both":  # the other axis is drawn all the same: every setting shares the random stream
            kept = 1 if self.axes == "time" else 0
            scale[:, kept], centre[:, kept] = 1.0, 0.0
        params = {"scale": scale, "centre": centre}
        if self.prob < 1:  # drawn only then, so that runs with every crop zoomed keep their random stream
            params["use"] = self._uniform(b) < self.prob
        return params

    def apply(self, x, y, params):
        scale, centre = params["scale"], params["centre"]
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = scale[:, 0], centre[:, 0]  # grid x: time (the last axis)
        theta[:, 1, 1], theta[:, 1, 2] = scale[:, 1], centre[:, 1]  # grid y: bands
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        if self.max_scale > 1:  # beyond the crop: its quietest value, per channel
            floor = x.float().amin(dim=(2, 3), keepdim=True)
            out = torch.nn.functional.grid_sample(x.float() - floor, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False).add(floor).to(x.dtype)
        else:
            out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                                  align_corners=False).to(x.dtype)
        if "use" in params:  # crops left as they are stay bit-identical
            out = torch.where(params["use"][:, None, None, None], out, x)
        return out, y


class FreqMixStyle(_Transform):
    """With probability ``prob``, normalises each crop band by band (mean and standard deviation over
    channels and time) and gives it a mix of its own and another crop's band statistics, ``lam ~
    Beta(alpha, alpha)`` (frequency-wise MixStyle, Kim et al. 2022; Schmid et al.'s CP-Mobile). The
    band statistics carry the microphone's and the room's colouring, so the model learns to look
    past them; the targets stay."""

    def __init__(self, *, prob: float, alpha: float, seed: int, eps: float = 1e-5):
        super().__init__(seed=seed)
        self.prob, self.alpha, self.eps = prob, alpha, eps

    def sample(self, x):
        b = x.shape[0]
        g1 = torch._standard_gamma(torch.full((b,), self.alpha), generator=self.generator)
        g2 = torch._standard_gamma(torch.full((b,), self.alpha), generator=self.generator)
        use = self._uniform(b) < self.prob
        return {"lam": torch.where(use, g1 / (g1 + g2), torch.ones(b)),
                "perm": torch.randperm(b, generator=self.generator)}

    def apply(self, x, y, params):
        lam, perm = params["lam"].to(x.dtype)[:, None, None, None], params["perm"]
        mean = x.mean(dim=(1, 3), keepdim=True)  # (B, 1, F, 1)
        std = (x.var(dim=(1, 3), keepdim=True) + self.eps).sqrt()
        mixed = (x - mean) / std * (lam * std + (1 - lam) * std[perm]) + lam * mean + (1 - lam) * mean[perm]
        return torch.where(lam == 1, x, mixed), y  # unmixed crops stay bit-identical


class SpecMix(_Transform):
    """With probability ``prob``, a crop takes 1-3 time bands and 1-3 frequency bands, each up to an
    eighth of its axis, from another crop of the batch (SpecMix, Kim et al. 2021: CutMix with the
    stripes SpecAugment masks). Its targets are both crops' weighted by the area each shows."""

    max_bands, max_share = 3, 1 / 8

    def __init__(self, *, prob: float, seed: int):
        super().__init__(seed=seed)
        self.prob = prob

    def _stripes(self, b: int, n: int) -> torch.Tensor:
        """``(B, n)`` bool: 1 to ``max_bands`` random stripes of up to ``max_share * n`` along an axis."""
        count = torch.randint(1, self.max_bands + 1, (b, 1), generator=self.generator)
        width = (self._uniform(b, self.max_bands) * self.max_share * n).long() + 1
        start = (self._uniform(b, self.max_bands) * (n - width + 1)).long()
        pos = torch.arange(n)[None, None, :]
        inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
        return (inside & (torch.arange(self.max_bands)[None, :, None] < count[..., None])).any(dim=1)

    def sample(self, x):
        b, _, f, t = x.shape
        use = self._uniform(b) < self.prob
        mask = self._stripes(b, f)[:, :, None] | self._stripes(b, t)[:, None, :]  # (B, F, T)
        return {"mask": mask & use[:, None, None], "perm": torch.randperm(b, generator=self.generator)}

    def apply(self, x, y, params):
        mask, perm = params["mask"], params["perm"]
        share = mask.float().mean(dim=(1, 2))[:, None]  # of the other crop, per crop
        return torch.where(mask[:, None], x[perm], x), (1 - share) * y + share * y[perm]


class Mixup(_Transform):
    """With probability ``prob``, mixes the batch with a shuffled copy of itself:
    ``x = lam * x + (1 - lam) * x[perm]``, ``lam ~ Beta(alpha, alpha)`` per clip. Targets are mixed
    with the same weights (``weighted``) or united (``or``: a clip holds both sounds).

    ``sources`` > 2 mixes up to that many clips: each further partner joins with probability
    ``prob``, and the weights of the clips that take part are Dirichlet(alpha, ...); with 2 this
    is the mixup above, drawn from the same random stream.

    ``domain="power"`` mixes the dB channels (``db_channels``, a flag per channel; all when None)
    as powers, ``10 log10(lam 10^(x/10) + ...)``: the features of the sounds played together,
    rather than an average of pictures. Other channels (deltas, cepstra, ...) are mixed
    linearly, and a raw waveform (``waveform``) with square-root weights, which mix the clips'
    powers in the same proportion."""

    def __init__(self, *, alpha: float, prob: float, targets: str, seed: int, domain: str = "db",
                 db_channels: list[bool] | None = None, waveform: bool = False, sources: int = 2):
        super().__init__(seed=seed)
        self.alpha, self.prob, self.targets, self.domain = alpha, prob, targets, domain
        self.mask, self.waveform, self.sources = _channel_mask(db_channels), waveform, sources

    def sample(self, x):
        b, partners = x.shape[0], self.sources - 1
        # Dirichlet(a, ...) from Gammas, drawn with this transform's own generator.
        g = torch.stack([torch._standard_gamma(torch.full((b,), self.alpha), generator=self.generator)
                         for _ in range(self.sources)])
        joins = self._uniform(partners, b) < self.prob
        g[1:] = torch.where(joins, g[1:], torch.zeros(()))
        # Each partner's share of 1 - lam (0 when it does not join): one partner's weight is exactly 1 - lam.
        split = g[1:] / g[1:].sum(0).clamp_min(1e-30)
        perms = torch.stack([torch.randperm(b, generator=self.generator) for _ in range(partners)])
        return {"lam": g[0] / g.sum(0), "perms": perms, "split": split}

    def apply(self, x, y, params):
        lam, perms, split = params["lam"], params["perms"], params["split"]
        w = lam.to(x.dtype)[:, None, None, None]
        shares = [(1 - w) * s.to(x.dtype)[:, None, None, None] for s in split]

        def mix(values, weight):  # weight maps a mixing weight to the factor of `values`
            out = weight(w) * values
            for perm, share in zip(perms, shares):
                out = out + weight(share) * values[perm]
            return out

        if self.domain != "power":
            mixed_x = mix(x, lambda v: v)
        elif self.waveform:
            mixed_x = mix(x, torch.sqrt)
        else:
            mixed_x = 10 * torch.log10(mix(torch.pow(10.0, x / 10), lambda v: v).clamp_min(1e-10))
            if self.mask is not None:
                mixed_x = torch.where(self.mask.to(x.device) > 0, mixed_x, mix(x, lambda v: v))
        mixed_x = torch.where(w == 1, x, mixed_x)  # unmixed clips stay bit-identical
        if self.targets == "or":
            mixed_y = y
            for perm, s in zip(perms, split):
                mixed_y = torch.where(((lam < 1) & (s > 0))[:, None], torch.maximum(mixed_y, y[perm]), mixed_y)
        else:
            mixed_y = lam[:, None] * y
            for perm, s in zip(perms, split):
                mixed_y = mixed_y + ((1 - lam) * s)[:, None] * y[perm]
        return mixed_x, mixed_y


def build_transforms(cfg: AugmentConfig, *, seed: int, channels: list[str] | None = None) -> list[_Transform]:
    """The enabled transforms in application order: shift, gain, EQ, band shift, stretch, resized
    crop, band-statistics mixing, SpecMix, masks, mixup.

    ``channels`` names the input channels (``features.frontend.channel_names``): gain and EQ move
    only the dB ones, and a raw waveform gets a linear gain and no band-wise transforms."""
    waveform = channels == ["waveform"]
    db_channels = None if channels is None else [name in DB_CHANNELS for name in channels]
    out: list[_Transform] = []
    if cfg.time_shift:
        out.append(TimeShift(seed=seed * 10 + 1))
    if cfg.gain_db > 0:
        out.append(Gain(max_db=cfg.gain_db, seed=seed * 10 + 2, db_channels=db_channels, linear=waveform))
    if cfg.eq_db > 0 and not waveform:
        out.append(RandomEQ(max_db=cfg.eq_db, seed=seed * 10 + 5, db_channels=db_channels))
    if cfg.freq_shift_bins > 0 and not waveform:
        out.append(FreqShift(max_bins=cfg.freq_shift_bins, seed=seed * 10 + 6))
    if cfg.time_stretch > 0 and not waveform:
        out.append(TimeStretch(max_change=cfg.time_stretch, seed=seed * 10 + 7))
    if (cfg.resized_crop_min < 1 or cfg.resized_crop_max > 1) and cfg.resized_crop_prob > 0 and not waveform:
        out.append(ResizedCrop(min_scale=cfg.resized_crop_min, prob=cfg.resized_crop_prob, axes=cfg.resized_crop_axes,
                               max_scale=cfg.resized_crop_max,
                               seed=seed * 10 + 8))
    if cfg.freq_mixstyle_prob > 0 and cfg.freq_mixstyle_alpha > 0 and not waveform:
        out.append(FreqMixStyle(prob=cfg.freq_mixstyle_prob, alpha=cfg.freq_mixstyle_alpha, seed=seed * 10 + 9))
    if cfg.specmix_prob > 0 and not waveform:
        out.append(SpecMix(prob=cfg.specmix_prob, seed=seed * 10))
    freq_masks = 0 if waveform else cfg.freq_masks
    if (cfg.time_masks and cfg.time_mask_frames) or (freq_masks and cfg.freq_mask_bins):
        out.append(SpecAugment(time_masks=cfg.time_masks, time_mask_frames=cfg.time_mask_frames,
                               freq_masks=freq_masks, freq_mask_bins=cfg.freq_mask_bins, seed=seed * 10 + 3))
    if cfg.mixup_alpha > 0 and cfg.mixup_prob > 0:
        out.append(Mixup(alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, targets=cfg.mixup_targets, seed=seed * 10 + 4,
                         domain=cfg.mixup_domain, db_channels=db_channels, waveform=waveform,
                         sources=cfg.mixup_sources))
    return out
