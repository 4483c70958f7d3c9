"""The inference budget: TTA views and members cut, least lwlrap lost first, until a blend fits."""

import numpy as np
import pytest

from audiotag.errors import AudiotagError
from audiotag.metrics import lwlrap
from audiotag.ensemble.budget import BudgetMember, ViewPredictions, fit_budget, kaggle_minutes
from audiotag.ensemble.members import load_member, member_truth, stack_members

from test_ensemble import fake_run


@pytest.fixture
def members(demo_data, tmp_path):
    # two equally good members with independent errors: dropping either costs lwlrap
    return [load_member(fake_run(tmp_path / name, demo_data, signal=0.5, seed=seed), name)
            for seed, name in enumerate(("a", "b"))]


def identical_views(calls):
    """A member's predictions by view where every view equals the blend: a view cut costs nothing."""
    def predict(member):
        calls.append(member.name)
        return ViewPredictions(oof=np.stack([member.oof] * 3), test_per_fold=[np.stack([member.test] * 3)] * 2,
                               beta=0.4, fold_mean="arithmetic")
    return predict


def mean_blend_oof(members):
    fnames, X, _, _ = stack_members(members)
    y, _ = member_truth(members[0], fnames, members[0].test_fnames)
    return lwlrap(y, X.mean(axis=1))


def test_a_free_view_cut_is_preferred_to_dropping_a_useful_member(members):
    a, b = members
    candidates = [BudgetMember(a, 30.0, views=2), BudgetMember(b, 20.0, views=0)]
    calls = []
    # a's last view saves 10 ms of 50: that alone fits; dropping b would fit too but lose lwlrap
    kept, ms, cuts = fit_budget(candidates, kaggle_minutes(40.0), predict=identical_views(calls))
    assert [m.name for m in kept] == ["a", "b"] and ms == pytest.approx({"a": 20.0, "b": 20.0})
    assert len(cuts) == 1 and cuts[0]["kind"] == "tta_view" and cuts[0]["member"] == "a"
    assert cuts[0]["views_after"] == 1 and cuts[0]["oof_after"] == pytest.approx(cuts[0]["oof_before"])
    assert calls == ["a"]  # only the member whose views were cut is predicted again
    assert mean_blend_oof(kept) > max(mean_blend_oof([a]), mean_blend_oof([b]))


def test_views_are_cut_from_every_member_before_a_useful_member_is_left_out(members):
    a, b = members
    # 25 of 60 ms: leaving either member out is 30 ms, too much; both without TTA is 20
    kept, ms, cuts = fit_budget([BudgetMember(a, 30.0, views=2), BudgetMember(b, 30.0, views=2)],
                                kaggle_minutes(25.0), predict=identical_views([]))
    assert [m.name for m in kept] == ["a", "b"] and ms == pytest.approx({"a": 10.0, "b": 10.0})
    assert [(c["kind"], c["member"], c["views_after"]) for c in cuts] == [("tta_view", "a", 0), ("tta_view", "b", 0)]


@pytest.mark.parametrize("exhaustive_states", [4096, 1])  # every combination scored, or greedy cuts
def test_cuts_continue_until_the_budget_fits_and_each_row_chains(members, exhaustive_states):
    a, b = members
    candidates = [BudgetMember(a, 30.0, views=2), BudgetMember(b, 20.0, views=0)]
    # 12 ms: only a without TTA (10 ms) alone fits
    kept, ms, cuts = fit_budget(candidates, kaggle_minutes(12.0), predict=identical_views([]),
                                exhaustive_states=exhaustive_states)
    assert [m.name for m in kept] == ["a"] and ms == pytest.approx({"a": 10.0})
    assert [c["kind"] for c in cuts] == ["tta_view", "member"] and cuts[-1]["member"] == "b"
    for before, after in zip(cuts, cuts[1:]):
        assert after["minutes_before"] == before["minutes_after"] and after["oof_before"] == before["oof_after"]
    assert cuts[0]["minutes_before"] == pytest.approx(kaggle_minutes(50.0))
    assert cuts[-1]["minutes_after"] <= kaggle_minutes(12.0)
    assert cuts[-1]["oof_after"] == pytest.approx(mean_blend_oof(kept))
    np.testing.assert_allclose(kept[0].oof, a.oof, rtol=1e-6)  # identical views: same predictions


def test_a_budget_nothing_fits_says_so(members):
    a, b = members
    with pytest.raises(AudiotagError, match="over the budget"):
        fit_budget([BudgetMember(a, 30.0, views=2), BudgetMember(b, 20.0, views=0)], kaggle_minutes(5.0),
                   predict=identical_views([]))


def test_within_budget_nothing_is_cut_or_predicted(members):
    calls = []
    kept, ms, cuts = fit_budget([BudgetMember(m, 10.0, views=2) for m in members], kaggle_minutes(20.0),
                                predict=identical_views(calls))
    assert [m.name for m in kept] == ["a", "b"] and cuts == [] and calls == []
    assert kept[0] is members[0]
