"""The inference budget of an ensemble stage: FAT2019's kernels had one GPU hour for ~3,400 private
test clips, so a blend had to be cheap enough to predict.

Each member's cost is its measured test-prediction time (all folds, every TTA view); each TTA
view costs the same share of it as the clean view. When the blend is over the budget, members
lose TTA views or are left out: of the combinations that fit, the one whose mean blend has the
best OOF lwlrap is kept (all are scored when there are few, else cuts are made greedily, least
lwlrap lost per minute saved). Fewer views need a member's predictions made again view by view
(no retraining); that is done only when the budget is exceeded.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..audio.inventory import default_cache_dir
from ..data.folds import read_folds_csv
from ..engine.precision import inference_precision, resolve_device
from ..errors import AudiotagError
from ..features.bank import ClipBank
from ..features.cache import build_features
from ..inference.predict import average_folds, blend_views, inference_spec, predict_views
from ..metrics import lwlrap
from .members import Member, check_aligned, member_truth, stack_members

# FAT2019's kernels had one hour of GPU time for ~3,400 private test clips.
KAGGLE_TEST_CLIPS = 3361


def kaggle_minutes(ms_per_clip: float) -> float:
    return ms_per_clip * KAGGLE_TEST_CLIPS / 60000


@dataclass
class ViewPredictions:
    """A member's OOF and per-fold test predictions split by TTA view: ``(1 + views, clips, labels)``
    each, clean view first, rows in the member's own order."""
    oof: np.ndarray
    test_per_fold: list[np.ndarray]
    beta: float
    fold_mean: str

    def member_at(self, member: Member, views: int) -> Member:
        test = average_folds([blend_views(t, self.beta, views) for t in self.test_per_fold], self.fold_mean)
        return dataclasses.replace(member, oof=blend_views(self.oof, self.beta, views), test=test, views=views)


def predict_by_view(member: Member, *, cache_dir: str | Path | None, progress: bool = False) -> ViewPredictions:
    """Predict a finished run's OOF and test clips again with its fold models, keeping the views apart."""
    run = member.run
    config = run.config
    device = resolve_device(config.train.device)
    precision = inference_precision(run.info.get("precision", "fp32"), device)
    features = build_features(run.data.load(), config, cache_dir=cache_dir or run.info.get("cache_dir") or default_cache_dir(),
                              splits=("curated", "test"), progress=progress)
    train_clips, test_clips = features.dataset.split("curated"), features.dataset.split("test")
    folds = read_folds_csv(run.dir / "folds.csv", source=run.info.get("folds_source", "stratified"))
    spec = inference_spec(config)
    oof_row = {f: i for i, f in enumerate(member.oof_fnames)}
    test_row = {f: i for i, f in enumerate(member.test_fnames)}
    missing = [c.fname for c in test_clips if c.fname not in test_row]
    if missing or len(test_clips) != len(test_row):
        raise AudiotagError(f"{run.dir}: the dataset's test clips are no longer the ones the run predicted "
                            f"(e.g. {(missing or ['a clip fewer'])[0]})", hint="retrain the stage on this data")
    test_order = [test_row[c.fname] for c in test_clips]
    oof = np.zeros((spec.views + 1, len(member.oof_fnames), len(member.vocabulary)))
    tests = []
    for k in run.finished_folds():
        model = run.load_fold_model(k, config=config, device=device)
        val = [train_clips[i] for i in folds.indices(train_clips, k)[1]]
        oof[:, [oof_row[c.fname] for c in val]] = predict_views(model, ClipBank.from_features(features, val), spec,
                                                               device=device, precision=precision)
        test = np.empty((spec.views + 1, len(test_clips), len(member.vocabulary)))
        test[:, test_order] = predict_views(model, ClipBank.from_features(features, test_clips), spec, device=device,
                                            precision=precision)
        tests.append(test)
    return ViewPredictions(oof=oof, test_per_fold=tests, beta=spec.beta, fold_mean=config.predict.fold_mean)


@dataclass
class BudgetMember:
    member: Member  # as trained: every TTA view
    ms_per_clip: float  # measured on the test clips: all folds, every view
    views: int  # the TTA views it was trained to predict with


# Up to this many combinations (each member at 0..views TTA views, or left out) are all scored;
# beyond it, cuts are chosen greedily.
EXHAUSTIVE_STATES = 4096


def fit_budget(candidates: list[BudgetMember], budget_minutes: float, *,
               predict: Callable[[Member], ViewPredictions],
               exhaustive_states: int = EXHAUSTIVE_STATES) -> tuple[list[Member], dict[str, float], list[dict]]:
    """Cut TTA views and members until the estimated time for KAGGLE_TEST_CLIPS clips fits.

    Returns the members to blend (with the predictions of their remaining views), each one's
    estimated ms per clip, and one row per cut (a member's views, then the members left out) with
    the minutes and mean-blend OOF lwlrap before and after it. ``predict`` gives a member's
    predictions by view; it is called only when the budget is exceeded."""
    members = [c.member for c in candidates]
    check_aligned(members)
    fnames, _, _, _ = stack_members(members)
    y, _ = member_truth(members[0], fnames, members[0].test_fnames)
    by_name = {c.member.name: c for c in candidates}
    split: dict[str, ViewPredictions] = {}
    at_views: dict[tuple[str, int], Member] = {}

    def member(name: str, views: int) -> Member:
        c = by_name[name]
        if views == c.views:
            return c.member
        if (name, views) not in at_views:
            if name not in split:
                split[name] = predict(c.member)
            at_views[name, views] = split[name].member_at(c.member, views)
        return at_views[name, views]

    def ms(name: str, views: int) -> float:
        c = by_name[name]
        return c.ms_per_clip * (1 + views) / (1 + c.views)  # the clean view and each TTA view cost the same

    def minutes(state: dict[str, int]) -> float:
        return kaggle_minutes(sum(ms(n, v) for n, v in state.items()))

    def score(state: dict[str, int]) -> float:
        _, X, _, _ = stack_members([member(n, v) for n, v in state.items()])
        return float(lwlrap(y, X.mean(axis=1)))

    full = {c.member.name: c.views for c in candidates}
    if minutes(full) <= budget_minutes:
        return members, {n: ms(n, v) for n, v in full.items()}, []
    choices = [[*range(c.views, -1, -1), None] for c in candidates]  # None: left out
    if math.prod(len(c) for c in choices) <= exhaustive_states:
        states = ({n: v for n, v in zip(full, combo) if v is not None} for combo in itertools.product(*choices))
        fitting = [st for st in states if st and minutes(st) <= budget_minutes]
        # the best mean blend; among equals, the one that keeps the most (least cut)
        state = max(fitting, key=lambda st: (score(st), minutes(st))) if fitting else None
    else:
        state = _greedy(full, budget_minutes, minutes, score)
    if state is None:
        cheapest = min(full, key=lambda n: ms(n, 0))
        raise AudiotagError(f"nothing fits: even {cheapest} alone without TTA needs {minutes({cheapest: 0}):.1f} "
                            f"minutes for {KAGGLE_TEST_CLIPS} clips, over the budget of {budget_minutes:g}",
                            hint="train fewer folds or a smaller model, or raise budget_minutes")
    return ([member(n, v) for n, v in state.items()], {n: ms(n, v) for n, v in state.items()},
            _cuts(full, state, minutes, score))


def _greedy(state: dict[str, int], budget_minutes: float, minutes, score) -> dict[str, int] | None:
    """One view or member at a time, the least lwlrap lost per minute saved, until it fits."""
    while minutes(state) > budget_minutes:
        options = [{**state, n: v - 1} for n, v in state.items() if v > 0]
        options += [{m: v for m, v in state.items() if m != n} for n in state] if len(state) > 1 else []
        if not options:
            return None
        before, now = score(state), minutes(state)
        state = min(options, key=lambda st: (before - score(st)) / (now - minutes(st)))
    return state


def _cuts(full: dict[str, int], final: dict[str, int], minutes, score) -> list[dict]:
    """The way from ``full`` to ``final`` as cuts, views first, each with what it cost."""
    steps = [("tta_view", n, final[n]) for n in full if n in final and final[n] < full[n]]
    steps += [("member", n, None) for n in full if n not in final]
    rows, state = [], dict(full)
    for kind, name, views in steps:
        after = {**state, name: views} if kind == "tta_view" else {m: v for m, v in state.items() if m != name}
        what = f"{name}: TTA views {full[name]} -> {views}" if kind == "tta_view" else f"{name} (left out)"
        rows.append({"kind": kind, "member": name, "dropped": what, "views_after": views,
                     "minutes_before": minutes(state), "minutes_after": minutes(after),
                     "oof_before": score(state), "oof_after": score(after)})
        state = after
    return rows
