import pytest
import torch

from audiotag.config import ModelConfig, load_config
from audiotag.errors import ConfigError
from audiotag.models import MODELS, build_model, count_parameters
from audiotag.models.cnn import InvertedResidualBlock


SPECTRAL = sorted(set(MODELS) - {"wavecnn"})


@pytest.mark.parametrize("pooling", ["avgmax", "attention"])
@pytest.mark.parametrize("name", SPECTRAL)
@pytest.mark.parametrize("channels, bands, frames", [(1, 64, 200), (3, 32, 37), (1, 16, 5)])
def test_models_return_logits_for_any_input_size(name, channels, bands, frames, pooling):
    model = build_model(ModelConfig(name=name, width=8, depth=3, convs_per_block=1, rnn_hidden=8, pooling=pooling),
                        in_channels=channels, n_mels=bands, n_classes=7)
    out = model(torch.randn(2, channels, bands, frames))
    assert set(out) == {"logits"} and out["logits"].shape == (2, 7)
    assert not torch.allclose(out["logits"][0], out["logits"][1])  # depends on the input


@pytest.mark.parametrize("hop, frames", [(320, 150), (160, 7), (16, 1)])
def test_waveform_cnn_turns_each_hop_into_one_frame(hop, frames):
    model = build_model(ModelConfig(name="wavecnn", width=8, depth=3), in_channels=1, n_mels=hop, n_classes=5).eval()
    x = torch.randn(2, 1, hop, frames)
    assert model(x)["logits"].shape == (2, 5)
    stem = model.stem(x.transpose(2, 3).reshape(2, 1, -1))
    assert stem.shape[1:] == (model.STEM, frames)
    # the stem is causal to frames: changing the last frame's samples leaves early columns almost alone
    y = x.clone()
    y[..., -1] = 0
    if frames > 4:
        torch.testing.assert_close(model.stem(y.transpose(2, 3).reshape(2, 1, -1))[..., : frames - 2], stem[..., : frames - 2])
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model(ModelConfig(name="wavecnn"), in_channels=1, n_mels=100, n_classes=5)


def test_attention_pooling_weighs_frames_per_class():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2, pooling="attention"), in_channels=1, n_mels=16, n_classes=3).eval()
    frames = model.frames(torch.randn(2, 1, 16, 40))
    weights = model.head.frame_weights(frames)
    assert weights.shape == (2, 3, frames.shape[2])
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 3))
    # the clip logit is the attention-weighted mean of the frame logits
    frame_logits = model.head.classifier(model.head.hidden(frames))
    torch.testing.assert_close(model.head(frames), (weights * frame_logits).sum(dim=2))


def test_recurrent_models_carry_context_across_the_whole_clip():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 32)
    late = x.clone()
    late[..., -8:] += 3.0  # change only the last 8 frames, beyond the CNN's receptive field from frame 0

    def first_frame(model, inp):
        if hasattr(model, "frames"):
            return model.frames(inp)[..., 0]
        b, c, f, t = inp.shape
        return model.recurrent(model.input_norm(inp.reshape(b, c * f, t)))[..., 0]

    cfg = dict(width=8, depth=2, rnn_hidden=8)
    for name in ("rnn", "crnn"):
        model = build_model(ModelConfig(name=name, **cfg), in_channels=1, n_mels=16, n_classes=3).eval()
        # the backward recurrence brings the clip's end to its first frame
        assert (first_frame(model, x) - first_frame(model, late)).abs().max() > 1e-6, name  # float noise is ~1e-7
    vgg = build_model(ModelConfig(name="vgg", **cfg), in_channels=1, n_mels=16, n_classes=3).eval()
    torch.testing.assert_close(first_frame(vgg, x), first_frame(vgg, late))  # convolutions alone do not reach


def test_width_depth_and_convs_are_parameters_not_variants():
    small = count_parameters(build_model(ModelConfig(width=8, depth=2, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    wider = count_parameters(build_model(ModelConfig(width=16, depth=2, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    deeper = count_parameters(build_model(ModelConfig(width=8, depth=3, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    more = count_parameters(build_model(ModelConfig(width=8, depth=2, convs_per_block=2), in_channels=1, n_mels=32, n_classes=5))
    assert small < wider and small < deeper and small < more
    capped = build_model(ModelConfig(width=64, depth=4, max_width=128), in_channels=1, n_mels=32, n_classes=5)
    assert capped.head[1].in_features == 128


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet", "crnn", "wavecnn"])
def test_channels_last_gives_the_same_function(name):
    torch.manual_seed(0)
    a = build_model(ModelConfig(name=name, width=8, depth=2), in_channels=1, n_mels=32, n_classes=4).eval()
    b = build_model(ModelConfig(name=name, width=8, depth=2), in_channels=1, n_mels=32, n_classes=4).eval()
    b.load_state_dict(a.state_dict())
    b.use_channels_last()
    x = torch.randn(3, 1, 32, 50)
    torch.testing.assert_close(a(x)["logits"], b(x)["logits"], atol=1e-5, rtol=1e-4)


def test_inverted_residual_units_expand_filter_each_channel_alone_and_start_as_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 6)
    same = InvertedResidualBlock(16, 16, convs=2).eval()
    depthwise = [m for m in same.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [(m.in_channels, m.out_channels, m.groups) for m in depthwise] == [(64, 64, 64)] * 2
    assert same.residual == [True, True]
    torch.testing.assert_close(same(x), torch.nn.functional.avg_pool2d(x, 2))  # zero-initialised branches
    wider = InvertedResidualBlock(16, 32, convs=2).eval()  # the first unit widens, so it has no shortcut
    assert wider.residual == [False, True] and wider(x).shape == (2, 32, 4, 3)
    assert [m.out_channels for m in wider.units[0] if isinstance(m, torch.nn.Conv2d)] == [64, 64, 32]
    stem = InvertedResidualBlock(1, 16, convs=2, stem=True)  # a full 3x3 conv reads the raw channels
    assert isinstance(stem.stem[0], torch.nn.Conv2d) and stem.stem[0].groups == 1 and len(stem.units) == 1
    model = build_model(ModelConfig(name="mobilenet", width=8, depth=3), in_channels=1, n_mels=16, n_classes=3)
    assert [len(block.units) for block in model.blocks] == [0, 1, 1]


@pytest.mark.parametrize("kernel", [(3, 3), (1, 3)])
def test_an_early_downsampling_mobilenet_computes_the_same_shapes_on_fewer_positions(kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 7)
    block = InvertedResidualBlock(16, 32, convs=2, kernel=kernel, early=True).eval()
    first, second = ([type(m) for m in unit] for unit in block.units)
    assert first.index(torch.nn.AvgPool2d) == 6 and torch.nn.AvgPool2d not in second  # before the projection
    assert block.residual == [False, True] and isinstance(block.pool, torch.nn.Identity)
    assert block(x).shape == (2, 32, 5, 4)  # as 2x2 pooling after the block, rounding up
    stem = InvertedResidualBlock(1, 16, convs=2, kernel=kernel, stem=True, early=True).eval()
    assert stem.stem[0].stride == (2, 2) and stem.residual == [True]  # the unit after the stem keeps the size
    assert InvertedResidualBlock(16, 16, convs=1, early=True).residual == [False]  # it halves: no shortcut
    # a 1x1 projection commutes with the pooling: in eval mode only the batch norms' statistics differ
    late = InvertedResidualBlock(16, 32, convs=1, kernel=kernel).eval()
    early = InvertedResidualBlock(16, 32, convs=1, kernel=kernel, early=True).eval()
    for m in late.modules():  # trained-like batch norms
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                torch.nn.init.normal_(t.data)
            m.running_var.data.uniform_(0.5, 2)
    with torch.no_grad():  # same tensors in the same order; the pooling layer shifts the keys' indices
        for a, b in zip(early.state_dict().values(), late.state_dict().values(), strict=True):
            a.copy_(b)
    torch.testing.assert_close(early(x), late(x), atol=1e-5, rtol=1e-4)

    def model(downsample):
        torch.manual_seed(0)
        return build_model(ModelConfig(name="mobilenet", width=8, depth=3, downsample=downsample),
                           in_channels=1, n_mels=64, n_classes=3).eval()

    pooled, early = model("pool"), model("early")
    assert count_parameters(pooled) == count_parameters(early)
    frames = torch.randn(2, 1, 64, 45)
    assert pooled.frames(frames).shape == early.frames(frames).shape == (2, 32, 6)
    with pytest.raises(ConfigError, match="downsample = early needs model.name mobilenet"):
        load_config(None, ["model.name=vgg", "model.downsample=early"])
    with pytest.raises(ConfigError, match="would drop every other band"):  # a 1x3 stem striding over bands
        load_config(None, ["model.band_context_blocks=0", "model.downsample=early"])
    load_config(None, ["model.band_context_blocks=1", "model.downsample=early"])  # 3x3 stem, 1x3 kernels later
    torch.manual_seed(0)
    _learns_which_band_holds_the_tone(build_model(ModelConfig(name="mobilenet", width=8, depth=3, dropout=0.0,
                                                              downsample="early"), in_channels=1, n_mels=32, n_classes=4))


def test_dropout_only_in_training():
    model = build_model(ModelConfig(width=8, depth=2, dropout=0.5), in_channels=1, n_mels=16, n_classes=3)
    x = torch.randn(4, 1, 16, 20)
    model.eval()
    torch.testing.assert_close(model(x)["logits"], model(x)["logits"])


def test_unknown_model_name():
    cfg = ModelConfig()
    cfg.name = "transformer9000"
    with pytest.raises(ConfigError, match="not a registered model"):
        build_model(cfg, in_channels=1, n_mels=8, n_classes=2)


def _bands_seen(model, bands=64):
    """Input bands that reach the lowest band of the last block's output."""
    for m in model.modules():  # trained-like weights: residual branches start at zero
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x = torch.randn(1, 1, bands, 48, requires_grad=True)
    model.eval().blocks(x)[:, :, 0, :].sum().backward()
    return int((x.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().max()) + 1


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet", "crnn"])
def test_band_context_blocks_restrict_the_receptive_field_over_bands(name):
    def model(blocks):
        torch.manual_seed(0)
        return build_model(ModelConfig(name=name, width=4, depth=4, band_context_blocks=blocks),
                           in_channels=1, n_mels=64, n_classes=3)

    kernels = [{m.kernel_size for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)}
               for block in model(1).blocks]
    assert kernels == [{(3, 3)}, {(1, 3)}, {(1, 3)}, {(1, 3)}]
    # 3x3 then 2x2 pooling reaches band 16 at most; 1x3 blocks and their pooling add only the 16 the
    # last band averages over; with 3x3 everywhere the context keeps growing
    seen = {blocks: _bands_seen(model(blocks)) for blocks in (1, 2, 4, None)}
    assert seen[1] <= 17 + (1 if name == "resnet" else 0) < seen[2] < seen[4] == seen[None]
    with pytest.raises(ConfigError, match="band_context_blocks"):
        load_config(None, ["model.depth=2", "model.band_context_blocks=3"])
    with pytest.raises(ConfigError, match="band_context_blocks"):
        load_config(None, ["model.name=rnn", "model.band_context_blocks=1"])


@pytest.mark.parametrize("settings", [{"name": "vgg", "band_context_blocks": 1},
                                      {"name": "mobilenet", "band_context_blocks": 1}, {"name": "mobilenet"},
                                      {"name": "mobilenet", "downsample": "early"}],
                         ids=["vgg-band-restricted", "mobilenet-band-restricted", "mobilenet", "mobilenet-early"])
def test_a_cnn_learns_which_band_holds_the_tone(settings):
    torch.manual_seed(0)
    _learns_which_band_holds_the_tone(build_model(ModelConfig(width=8, depth=3, dropout=0.0, **settings),
                                                  in_channels=1, n_mels=32, n_classes=4))


def _learns_which_band_holds_the_tone(model):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (256,), generator=g)
    x = torch.randn(256, 1, 32, 24, generator=g)
    x[torch.arange(256), 0, 4 + 7 * labels, :] += 3.0  # class k: a steady tone in band 4 + 7k
    y = torch.nn.functional.one_hot(labels, 4).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        for i in range(0, 256, 32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[i:i + 32])["logits"], y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = torch.randn(64, 1, 32, 24, generator=g)
    truth = torch.arange(64) % 4
    test[torch.arange(64), 0, 4 + 7 * truth, :] += 3.0
    assert (model(test)["logits"].argmax(1) == truth).float().mean() > 0.9
