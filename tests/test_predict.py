import numpy as np
import pytest
import torch
from torch import nn

from audiotag.features.bank import ClipBank
from audiotag.inference.predict import InferenceSpec, average_folds, blend_views, predict_model, predict_views


class MeanModel(nn.Module):
    """Logit of class 0 = the window's mean feature value; class 1 = its max."""

    def forward(self, x):
        return {"logits": torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)}


def ramp_bank():
    # one clip whose frame t has value t/100: windows differ in their mean
    return ClipBank([np.tile(np.arange(100, dtype=np.float32) / 100, (1, 2, 1))])


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_sliding_windows_mean_and_max():
    spec = InferenceSpec(window=40, hop=20, aggregate="mean")
    starts = [0, 20, 40, 60]
    means = [sigmoid(np.arange(s, s + 40).mean() / 100) for s in starts]
    out = predict_model(MeanModel(), ramp_bank(), spec, device=torch.device("cpu"))
    assert out[0, 0] == pytest.approx(np.mean(means), abs=1e-6)
    spec.aggregate = "max"
    out = predict_model(MeanModel(), ramp_bank(), spec, device=torch.device("cpu"))
    assert out[0, 0] == pytest.approx(max(means), abs=1e-6)


def test_any_clip_length_gets_a_prediction():
    arrays = [np.random.default_rng(i).standard_normal((1, 4, n)).astype(np.float32) for i, n in enumerate((1, 7, 40, 333))]
    out = predict_model(MeanModel(), ClipBank(arrays), InferenceSpec(window=40, hop=20), device=torch.device("cpu"))
    assert out.shape == (4, 2) and np.isfinite(out).all()


def test_tta_blend_is_beta_clean_plus_rest_views():
    bank = ramp_bank()
    cpu = torch.device("cpu")
    clean = predict_model(MeanModel(), bank, InferenceSpec(window=40, hop=20, views=0), device=cpu)
    with_tta = predict_model(MeanModel(), bank, InferenceSpec(window=40, hop=20, views=3, beta=0.25), device=cpu)
    only_views = predict_model(MeanModel(), bank, InferenceSpec(window=40, hop=20, views=3, beta=0.0), device=cpu)
    np.testing.assert_allclose(with_tta, 0.25 * clean + 0.75 * only_views, rtol=1e-6)
    assert not np.allclose(only_views, clean)  # the views really are different inputs


def test_views_are_a_prefix_so_fewer_views_need_no_new_prediction():
    bank, cpu = ramp_bank(), torch.device("cpu")
    three = predict_views(MeanModel(), bank, InferenceSpec(window=40, hop=20, views=3, beta=0.3), device=cpu)
    one = predict_views(MeanModel(), bank, InferenceSpec(window=40, hop=20, views=1, beta=0.3), device=cpu)
    assert three.shape == (4, 1, 2)
    np.testing.assert_array_equal(three[:2], one)
    assert not np.allclose(three[1], three[2])
    for views in (0, 1, 3):
        spec = InferenceSpec(window=40, hop=20, views=views, beta=0.3)
        np.testing.assert_array_equal(blend_views(three, 0.3, views), predict_model(MeanModel(), bank, spec, device=cpu))


def test_fold_means():
    a, b = np.array([[0.1, 0.9]]), np.array([[0.4, 0.1]])
    np.testing.assert_allclose(average_folds([a, b]), [[0.25, 0.5]])
    np.testing.assert_allclose(average_folds([a, b], "geometric"), [[0.2, 0.3]])
