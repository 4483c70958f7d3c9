import pytest
import torch

from audiotag.config import ModelConfig
from audiotag.errors import ConfigError
from audiotag.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels, bands, frames", [(1, 64, 200), (3, 32, 37), (1, 16, 5)])
def test_models_return_logits_for_any_input_size(name, channels, bands, frames):
    model = build_model(ModelConfig(name=name, width=8, depth=3, convs_per_block=1), in_channels=channels,
                        n_mels=bands, n_classes=7)
    out = model(torch.randn(2, channels, bands, frames))
    assert set(out) == {"logits"} and out["logits"].shape == (2, 7)
    assert not torch.allclose(out["logits"][0], out["logits"][1])  # depends on the input


def test_width_depth_and_convs_are_parameters_not_variants():
    small = count_parameters(build_model(ModelConfig(width=8, depth=2, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    wider = count_parameters(build_model(ModelConfig(width=16, depth=2, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    deeper = count_parameters(build_model(ModelConfig(width=8, depth=3, convs_per_block=1), in_channels=1, n_mels=32, n_classes=5))
    more = count_parameters(build_model(ModelConfig(width=8, depth=2, convs_per_block=2), in_channels=1, n_mels=32, n_classes=5))
    assert small < wider and small < deeper and small < more
    capped = build_model(ModelConfig(width=64, depth=4, max_width=128), in_channels=1, n_mels=32, n_classes=5)
    assert capped.head[1].in_features == 128


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_gives_the_same_function(name):
    torch.manual_seed(0)
    a = build_model(ModelConfig(name=name, width=8, depth=2), in_channels=1, n_mels=32, n_classes=4).eval()
    b = build_model(ModelConfig(name=name, width=8, depth=2), in_channels=1, n_mels=32, n_classes=4).eval()
    b.load_state_dict(a.state_dict())
    b.use_channels_last()
    x = torch.randn(3, 1, 32, 50)
    torch.testing.assert_close(a(x)["logits"], b(x)["logits"], atol=1e-5, rtol=1e-4)


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
