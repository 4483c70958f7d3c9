"""`audiotag pipeline`: stages in order, reuse of finished work, resumption after SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from audiotag import cli, fsutil
from audiotag.errors import ConfigError
from audiotag.ensemble.budget import predict_by_view
from audiotag.ensemble.members import load_member
from audiotag.recipes.pipeline import (FINGERPRINT_SCHEMA, StageState, _markdown, _test_lwlrap,
                                       ensemble_inference, only_new_defaults)
from audiotag.inference.score import score_submission
from audiotag.inference.standardize import standardize_labels
from audiotag.metrics import lwlrap
from audiotag.runs import DataSpec, read_predictions
from audiotag.recipes.recipe import bundled_recipe, load_recipe, parse_recipe

from test_train import TINY

RECIPE = {
    "set": {"train.epochs": 2},
    "stages": [
        {"name": "baseline"},
        {"name": "freqpos", "set": {"features.channels": ["logmel", "freqpos"]}},
        {"name": "blend", "ensemble": ["baseline", "freqpos"], "blends": ["mean", "weighted"]},
    ],
}


def write_recipe(path, recipe=RECIPE):
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(recipe, demo_data, out, cache, *extra):
    args = ["pipeline", str(recipe), "--data", str(demo_data), "--out", str(out), "--cache-dir", str(cache), "-q",
            *extra]
    for item in TINY:
        args += ["--set", item]
    return cli.main(args)


def assert_standardised(submission, source):
    """OUT/submission.csv is the final stage's test predictions, standardised per label."""
    fnames, labels, probs = read_predictions(source)
    got_fnames, got_labels, got = read_predictions(submission)
    assert (got_fnames, got_labels) == (fnames, labels)
    np.testing.assert_allclose(got, standardize_labels(probs), atol=2e-5)  # from 6-decimal probabilities
    assert np.abs(got - probs).max() > 0.01  # it did change the scores


def mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.glob("*/fold_*/best.pt")}


def test_stages_run_in_order_and_finished_ones_are_reused(demo_data, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml")
    out, cache = tmp_path / "p", tmp_path / "cache"
    assert run_cli(recipe, demo_data, out, cache, "--standardize", "yes") == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"].values()] == ["done"] * 3
    assert_standardised(out / "submission.csv", out / "blend" / "submission.csv")
    assert state["submission_standardized"] is True
    # the submission's own score, as `audiotag score` reads it from the files, in pipeline.json and pipeline.md
    scored = score_submission(out / "submission.csv", demo_data / "test_labels.csv")["lwlrap"]
    assert state["submission_test_lwlrap"] == pytest.approx(scored, abs=1e-6)
    assert f"| submission.csv | blend's test predictions, standardised per label | - | {scored:.4f} |" in \
        (out / "pipeline.md").read_text()
    again = tmp_path / "again.csv"  # predict on the pipeline's own test set writes the same file
    assert cli.main(["predict", str(out), "--data", str(demo_data), "--out", str(again), "--cache-dir", str(cache),
                     "--standardize", "yes", "-q"]) == 0
    np.testing.assert_allclose(read_predictions(again)[2], read_predictions(out / "submission.csv")[2], atol=1.5e-6)
    assert (out / "freqpos" / "config.yaml").read_text().count("freqpos") >= 1
    assert yaml.safe_load((out / "baseline" / "config.yaml").read_text())["train"]["epochs"] == 3  # --set wins
    first = mtimes(out)
    assert len(first) == 4  # 2 training stages x 2 folds

    assert "[2/3] freqpos: about" in capsys.readouterr().out  # the training left, at the baseline's pace
    assert run_cli(recipe, demo_data, out, cache) == 0  # unchanged: nothing retrained
    assert "done earlier, reused" in capsys.readouterr().out
    assert mtimes(out) == first
    # 28 test clips of 14 labels are too few for --standardize auto: the blend's probabilities, as they are
    assert (out / "submission.csv").read_bytes() == (out / "blend" / "submission.csv").read_bytes()
    state = json.loads((out / "pipeline.json").read_text())  # so its score is the blend's own
    assert state["submission_test_lwlrap"] == pytest.approx(state["stages"]["blend"]["test_lwlrap"], abs=1e-4)
    assert state["submission_test_lwlrap"] != pytest.approx(scored, abs=1e-6)

    changed = json.loads(json.dumps(RECIPE))
    changed["stages"][1]["set"]["model.dropout"] = 0.3
    assert run_cli(write_recipe(recipe, changed), demo_data, out, cache) == 0
    now = mtimes(out)
    assert {k: v for k, v in now.items() if k.parts[0] == "baseline"} == \
           {k: v for k, v in first.items() if k.parts[0] == "baseline"}  # untouched
    assert all(now[k] != first[k] for k in now if k.parts[0] == "freqpos")  # redone
    assert (out / ".replaced").is_dir() and len(list((out / ".replaced").iterdir())) == 2  # freqpos, blend

    # an inference budget (--budget-minutes) that fits one member but not both: the blend is cut to fit
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    minutes = {m: stages[m]["inference_ms_per_clip"] * 3361 / 60000 for m in ("baseline", "freqpos")}
    budget = max(minutes.values()) * 1.01
    assert run_cli(write_recipe(recipe, changed), demo_data, out, cache, "--budget-minutes", str(budget)) == 0
    blend = json.loads((out / "pipeline.json").read_text())["stages"]["blend"]
    cuts = blend["budget_cuts"]
    assert cuts and cuts[-1]["minutes_after"] <= budget < cuts[0]["minutes_before"]
    assert blend["inference_ms_per_clip"] * 3361 / 60000 == pytest.approx(cuts[-1]["minutes_after"])
    assert "inference budget cut" in (out / "pipeline.md").read_text()
    if [c["kind"] for c in cuts] == ["member"]:  # one member left as it was: its predictions are the submission
        kept = blend["members"][0]
        assert (out / "submission.csv").read_bytes() == (out / kept / "test_predictions.csv").read_bytes()


def test_the_submission_is_scored_only_against_labels_for_every_clip(demo_copy):
    truth = pd.read_csv(demo_copy / "test_labels.csv")
    labels = [line.split(",", 1)[1] for line in (demo_copy / "vocabulary.csv").read_text().split()]
    fnames = list(truth.fname)
    rows = np.random.default_rng(0).random((len(fnames), len(labels)))
    rows[0] = [float(label in truth.labels[0].split(",")) for label in labels]  # one clip ranked right
    spec = DataSpec(root=str(demo_copy))
    y = np.array([[float(label in str(row).split(",")) for label in labels] for row in truth.labels])
    assert _test_lwlrap(spec, fnames, labels, rows) == pytest.approx(lwlrap(y, rows))
    assert _test_lwlrap(spec, fnames, labels[::-1], rows) is None  # another label order
    assert _test_lwlrap(spec, fnames + ["nope.wav"], labels, np.vstack([rows, rows[:1]])) is None
    (demo_copy / "test_labels.csv").unlink()  # a real competition's test set: nothing to score against
    assert _test_lwlrap(spec, fnames, labels, rows) is None


def test_predictions_by_view_reproduce_a_finished_stage(straight_pipeline):
    _, out, cache = straight_pipeline
    member = load_member(out / "baseline", "baseline")
    views = predict_by_view(member, cache_dir=cache)
    assert views.oof.shape == (2, len(member.oof_fnames), len(member.vocabulary))  # clean + 1 TTA view (TINY)
    assert len(views.test_per_fold) == 2  # one per fold
    again = views.member_at(member, 1)
    np.testing.assert_allclose(again.oof, member.oof, atol=1e-6)  # the CSVs hold 6 decimals
    np.testing.assert_allclose(again.test, member.test, atol=1e-6)
    clean = views.member_at(member, 0)
    assert not np.allclose(clean.oof, member.oof, atol=1e-4)  # the view really was removed


@pytest.fixture(scope="module")
def straight_pipeline(demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight-pipeline")
    recipe = write_recipe(tmp / "recipe.yaml")
    assert run_cli(recipe, demo_data, tmp / "out", tmp / "cache") == 0
    return recipe, tmp / "out", tmp / "cache"


def test_a_setting_added_since_a_stage_ran_does_not_redo_it_while_at_its_default(straight_pipeline, demo_data,
                                                                               tmp_path, capsys):
    """An older audiotag knew no `augment.time_stretch`: the settings it recorded for its stages lack
    the key, and its fingerprints were computed without it. Upgrading must reuse that work."""
    import shutil

    recipe, straight, cache = straight_pipeline
    out = tmp_path / "old"
    shutil.copytree(straight, out)
    state = json.loads((out / "pipeline.json").read_text())
    for name in ("baseline", "freqpos", "blend"):
        state["stages"][name]["fingerprint"] = f"older-{name}"  # made by that version over what it knew
    for name in ("baseline", "freqpos"):
        del state["stages"][name]["settings"]["config"]["augment"]["time_stretch"]
    (out / "pipeline.json").write_text(json.dumps(state))
    before = mtimes(out)

    capsys.readouterr()
    assert run_cli(recipe, demo_data, out, cache) == 0
    assert capsys.readouterr().out.count("done earlier, reused") == 3
    assert mtimes(out) == before and not (out / ".replaced").exists()
    now = json.loads((out / "pipeline.json").read_text())["stages"]
    assert {n: s["fingerprint"] for n, s in now.items()} == \
           {n: s["fingerprint"] for n, s in json.loads((straight / "pipeline.json").read_text())["stages"].items()}

    # ... but not when the new setting is away from its default, nor when a known one changed
    defaults = {"augment": {"time_stretch": 0.0, "mixup": 0.5}, "noisy": {"loss": "bce"}}
    recorded = {"augment": {"mixup": 0.5}}
    assert only_new_defaults(recorded, {"augment": {"time_stretch": 0.0, "mixup": 0.5}}, defaults)
    assert not only_new_defaults(recorded, {"augment": {"time_stretch": 0.2, "mixup": 0.5}}, defaults)
    assert not only_new_defaults(recorded, {"augment": {"time_stretch": 0.0, "mixup": 0.4}}, defaults)
    # a whole section the older version did not know counts like a single key
    assert only_new_defaults(recorded, {"augment": {"mixup": 0.5}, "noisy": {"loss": "bce"}}, defaults)
    assert not only_new_defaults(recorded, {"augment": {"mixup": 0.5}, "noisy": {"loss": "lq"}}, defaults)
    # a setting unknown to the defaults is a change, never assumed harmless
    assert not only_new_defaults(recorded, {"augment": {"mixup": 0.5, "other": 1}}, defaults)


def test_a_pipeline_json_of_another_fingerprint_schema_is_re_run_and_says_so(straight_pipeline, tmp_path):
    import shutil

    recipe, straight, _ = straight_pipeline
    out = tmp_path / "older"
    shutil.copytree(straight, out)
    state = json.loads((out / "pipeline.json").read_text())
    assert state["fingerprint_schema"] == FINGERPRINT_SCHEMA
    current = StageState(out, load_recipe(recipe), DataSpec(), log=lambda m: None)
    assert set(current.recorded) == {"baseline", "freqpos", "blend"}
    del state["fingerprint_schema"]  # written before schemas existed
    (out / "pipeline.json").write_text(json.dumps(state))
    said = []
    older = StageState(out, load_recipe(recipe), DataSpec(), log=said.append)
    assert older.recorded == {}
    assert "fingerprint schema 1, this one 2" in said[0] and "re-run" in said[0]
    # a data option added later counts as unchanged only at its default
    recorded = {"data": {k: v for k, v in vars(DataSpec(root="d")).items() if k != "only_listed"}}
    listed = DataSpec(root="d", only_listed=True)
    defaults = StageState(out, load_recipe(recipe), listed, log=lambda m: None).defaults
    assert only_new_defaults(recorded, {"data": vars(DataSpec(root="d"))}, defaults)
    assert not only_new_defaults(recorded, {"data": vars(listed)}, defaults)


DISTILLED = {"name": "distilled", "pseudo_labels": "blend", "teacher": "baseline",
             "set": {"noisy.strategy": "pseudo", "noisy.pseudo_rule": "soft", "noisy.soft_alpha": 0.0,
                     "noisy.batch_fraction": 0.2, "noisy.test_targets": "soft", "noisy.test_batch_fraction": 0.2}}


def test_a_distillation_stage_learns_the_blend_on_test_clips_and_a_run_on_noisy_ones(straight_pipeline, demo_data,
                                                                                   tmp_path):
    """The stage README.md shows: one model from the blend's probabilities on every test clip and
    the baseline's on every noisy clip."""
    import shutil

    _, straight, cache = straight_pipeline
    out = tmp_path / "p"
    shutil.copytree(straight, out)
    recipe = json.loads(json.dumps(RECIPE))
    recipe["stages"].append(DISTILLED)
    assert run_cli(write_recipe(tmp_path / "recipe.yaml", recipe), demo_data, out, cache) == 0
    noisy = yaml.safe_load((out / "distilled" / "config.yaml").read_text())["noisy"]
    assert noisy["teacher"] == str((out / "baseline").resolve())
    assert noisy["test_predictions"] == str((out / "blend" / "submission.csv").resolve())
    test_rows = pd.read_csv(out / "distilled" / "test_pseudo_labels.csv")
    assert len(test_rows) == len(pd.read_csv(demo_data / "sample_submission.csv")) and test_rows.kept.all()
    n_noisy = len(pd.read_csv(demo_data / "train_noisy.csv"))
    for k in (0, 1):  # every noisy clip kept, targets from the baseline's fold-k model
        selection = pd.read_csv(out / "distilled" / "pseudo" / f"selection_fold_{k}.csv")
        assert len(selection) == n_noisy and selection.kept.all()
        assert np.load(out / "distilled" / "pseudo" / f"teacher_fold_{k}.npy").shape[0] == n_noisy
    assert (out / "submission.csv").read_bytes() == (out / "distilled" / "test_predictions.csv").read_bytes()


def test_a_stage_pseudo_labels_the_test_set_with_a_blend_and_joins_the_final_blend(straight_pipeline, demo_data,
                                                                                  tmp_path, capsys):
    import shutil

    _, straight, cache = straight_pipeline
    out = tmp_path / "p"
    shutil.copytree(straight, out)
    recipe = json.loads(json.dumps(RECIPE))
    recipe["stages"] += [{"name": "test_pl", "pseudo_labels": "blend", "set": {"noisy.test_threshold": 0.05}},
                         {"name": "final", "ensemble": ["baseline", "freqpos", "test_pl"], "blends": ["mean"]}]
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    before = mtimes(out)
    capsys.readouterr()
    assert run_cli(path, demo_data, out, cache) == 0
    assert capsys.readouterr().out.count("done earlier, reused") == 3  # baseline, freqpos, blend
    assert {k: v for k, v in mtimes(out).items() if k.parts[0] != "test_pl"} == before
    config = yaml.safe_load((out / "test_pl" / "config.yaml").read_text())
    assert config["noisy"]["test_predictions"] == str((out / "blend" / "submission.csv").resolve())
    chosen = pd.read_csv(out / "test_pl" / "test_pseudo_labels.csv")
    assert chosen.kept.sum() > 0
    assert (out / "submission.csv").read_bytes() == (out / "final" / "submission.csv").read_bytes()
    trained = mtimes(out)
    assert run_cli(path, demo_data, out, cache) == 0  # every stage, those after an ensemble too, is reused
    assert capsys.readouterr().out.count("done earlier, reused") == 5
    assert mtimes(out) == trained

    # a copied pipeline folder is reused too, though test_pl's saved config points into the original
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    copied = mtimes(moved)
    assert run_cli(path, demo_data, moved, cache) == 0
    assert capsys.readouterr().out.count("done earlier, reused") == 5 and not (moved / ".replaced").exists()
    assert mtimes(moved) == copied
    # a folder moved while its pseudo-label stage was interrupted resumes with the new location's
    # pseudo-labels, as the original's are gone
    relocated = tmp_path / "relocated"
    shutil.copytree(out, relocated)
    shutil.move(out, tmp_path / "gone")
    info = json.loads((relocated / "test_pl" / "run.json").read_text())
    (relocated / "test_pl" / "run.json").write_text(json.dumps({**info, "status": "running"}))
    for name in ("done.json", "last.pt", "best.pt"):  # fold 1 trains again, on the pseudo-labels it reads
        (relocated / "test_pl" / "fold_1" / name).unlink()
    assert run_cli(path, demo_data, relocated, cache) == 0
    assert "test_pl: resuming" in capsys.readouterr().out
    config = yaml.safe_load((relocated / "test_pl" / "config.yaml").read_text())
    assert config["noisy"]["test_predictions"] == str((relocated / "blend" / "submission.csv").resolve())
    original = yaml.safe_load((tmp_path / "gone" / "test_pl" / "config.yaml").read_text())
    assert config == {**original, "noisy": {**original["noisy"], "test_predictions": config["noisy"]["test_predictions"]}}
    assert json.loads((relocated / "test_pl" / "run.json").read_text())["status"] == "done"
    for name in ("test_predictions.csv", "oof_predictions.csv"):  # retrained to the bit on the same pseudo-labels
        assert (relocated / "test_pl" / name).read_bytes() == (tmp_path / "gone" / "test_pl" / name).read_bytes()

    with pytest.raises(ConfigError, match="not an earlier stage"):
        parse_recipe({"stages": [{"name": "a", "pseudo_labels": "b"}, {"name": "b"}]})
    with pytest.raises(ConfigError, match="two or more earlier stages and nothing else"):
        parse_recipe({"stages": [{"name": "a"}, {"name": "b"}, {"name": "c", "ensemble": ["a", "b"],
                                                                "pseudo_labels": "a"}]})
    blend_first = [{"name": "a"}, {"name": "b"}, {"name": "e", "ensemble": ["a", "b"]}]
    with pytest.raises(ConfigError, match="uses ensemble stage e as an input"):  # a teacher must be a training stage
        parse_recipe({"stages": blend_first + [{"name": "t", "teacher": "e", "pseudo_labels": "e"}]})


# Files whose appearance marks a moment inside a training stage: a fold's first epoch is written.
# The kill lands 0-0.3 s later (seeded): mid-epoch, mid-checkpoint or between stages.
KILL_MARKS = ["baseline/fold_0/last.pt", "baseline/fold_1/last.pt", "freqpos/fold_0/last.pt",
              "freqpos/fold_1/last.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(len(KILL_MARKS)))
def test_a_pipeline_killed_at_a_random_moment_finishes_without_redoing_stages_and_matches(straight_pipeline, demo_data,
                                                                                          tmp_path, seed):
    recipe, straight, cache = straight_pipeline
    mark = KILL_MARKS[seed]  # every training stage and fold, each at a seeded random moment after its mark
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "audiotag", "pipeline", str(recipe), "--data", str(demo_data), "--out", str(cut),
           "--cache-dir", str(cache), "-q"] + [a for item in TINY for a in ("--set", item)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (cut / mark).exists():
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng(seed).uniform(0, 0.3)))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((cut / "pipeline.json").read_text())["stages"]
    finished = {name for name, stage in state.items() if stage["status"] == "done"}
    if mark.startswith("freqpos"):
        assert "baseline" in finished
    before = {k: v for k, v in mtimes(cut).items() if k.parts[0] in finished}

    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {k: v for k, v in mtimes(cut).items() if k.parts[0] in finished} == before  # not redone
    # the interrupted stage continues exactly: the final submission is the uninterrupted one, to the bit
    assert (cut / "submission.csv").read_bytes() == (straight / "submission.csv").read_bytes()
    assert not list(cut.rglob(f"{fsutil.TMP_PREFIX}*"))  # nothing half-written left behind


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a"}, {"name": "a"}], "used twice"),
    ([{"name": "a", "epochs": 3}], "unknown key"),
    ([{"name": "b", "ensemble": ["a", "c"]}], "not an earlier stage"),
    ([{"name": "a"}, {"name": "p", "variant": "pseudo_agree"}], "needs `teacher"),
    ([{"name": "a"}, {"name": "b"}, {"name": "e", "ensemble": ["a", "b"], "set": {"train.epochs": 1}}], "nothing else"),
    ([{"name": "a", "variant": "nope"}], "unknown variant"),
    ([{"name": "../x"}], "plain folder name"),
    ([{"name": "a", "budget_minutes": 5}], "budget_minutes"),
])
def test_recipes_that_cannot_work_are_refused_before_any_training(stages, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({"stages": stages})


def test_a_later_stage_with_a_bad_setting_is_refused_before_the_first_trains(demo_data, tmp_path, capsys):
    bad = json.loads(json.dumps(RECIPE))
    bad["stages"][1]["set"]["model.dropout"] = 1.5
    out = tmp_path / "p"
    assert run_cli(write_recipe(tmp_path / "recipe.yaml", bad), demo_data, out, tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "stage freqpos" in err and "dropout" in err and "Traceback" not in err
    assert not (out / "baseline").exists()  # nothing was trained


def test_a_stage_of_its_own_seed_keeps_the_other_stages_folds(tmp_path):
    from audiotag.config import Config
    from audiotag.recipes.recipe import stage_config

    recipe = parse_recipe({"set": {"seed": 4}, "stages": [
        {"name": "a"}, {"name": "b", "set": {"seed": 1}}, {"name": "c", "set": {"seed": 2, "train.fold_seed": 7}},
        {"name": "blend", "ensemble": ["a", "b", "c"]}]})
    configs = {s.name: stage_config(recipe, s, base=Config(), out=tmp_path) for s in recipe.stages[:3]}
    assert (configs["a"].seed, configs["a"].train.fold_seed) == (4, None)  # as before: folds of seed 4
    assert (configs["b"].seed, configs["b"].train.fold_seed) == (1, 4)
    assert (configs["c"].seed, configs["c"].train.fold_seed) == (2, 7)  # a stage's own fold seed stands
    recipe.forced = {"train": {"fold_seed": 3}}
    assert stage_config(recipe, recipe.stages[1], base=Config(), out=tmp_path).train.fold_seed == 3
    # --set seed=N moves every stage: the seed ensemble stays one, on the folds of seed N
    recipe.forced = {"seed": 10}
    moved = {s.name: stage_config(recipe, s, base=Config(), out=tmp_path) for s in recipe.stages[:3]}
    assert [(c.seed, c.train.fold_seed) for c in moved.values()] == [(10, None), (7, 10), (8, 7)]
    recipe.forced = {"seed": 1}
    with pytest.raises(ConfigError, match="stage b: .* negative"):
        stage_config(recipe, recipe.stages[1], base=Config(), out=tmp_path)


def test_a_budget_is_a_positive_number_for_a_recipe_with_a_blend():
    from audiotag.recipes.recipe import with_budget

    recipe = parse_recipe(RECIPE)
    assert [s.budget_minutes for s in with_budget(recipe, 7).stages] == [None, None, 7.0]
    with pytest.raises(ConfigError, match="positive"):
        with_budget(recipe, 0)
    with pytest.raises(ConfigError, match="has none"):
        with_budget(parse_recipe({"stages": [{"name": "a"}]}), 5)


def test_bundled_recipes_are_valid(tmp_path):
    from audiotag.config import Config
    from audiotag.recipes.recipe import stage_config

    for name in ("demo", "cpu-small", "gpu-full"):
        recipe = load_recipe(bundled_recipe(name))
        assert recipe.final.ensemble, name  # every recipe ends with a blend
        for stage in recipe.stages:
            if stage.ensemble is None:
                stage_config(recipe, stage, base=Config(), out=tmp_path)  # validates


def test_an_ensembles_inference_time_counts_only_the_members_its_blend_weighs():
    """A weighted blend that gives two of three members weight 0 needs only the third at inference."""
    ms = {"baseline": 37.4, "student": 37.8, "long": 37.4}
    weighted = {"kept": ["baseline", "student", "long"], "chosen": "weighted",
                "chosen_weights": {"baseline": 0.0, "student": 0.0, "long": 1.0}}
    assert ensemble_inference(weighted, ms) == (["long"], ["baseline", "student"], 37.4)
    caruana = {**weighted, "chosen_weights": {"baseline": 0.25, "student": 0.0, "long": 0.75}}
    assert ensemble_inference(caruana, ms) == (["baseline", "long"], ["student"], pytest.approx(74.8))
    stacked = {"kept": ["baseline", "student"], "chosen": "stack_logistic", "chosen_weights": None,
               "member_ms_per_clip": {"baseline": 40.0}}  # timed again for the stage's budget
    assert ensemble_inference(stacked, ms) == (["baseline", "student"], [], pytest.approx(77.8))
    assert ensemble_inference(stacked, {"baseline": 37.4, "student": None})[2] is None  # one member never timed

    results = {"long": {"kind": "train", "oof_lwlrap": 0.9, "test_lwlrap": 0.72, "minutes": 128.7,
                        "inference_ms_per_clip": 37.4},
               "final": {"kind": "ensemble", "blend": "weighted", "members": ["long"],
                         "zero_weight": ["baseline", "student"], "oof_lwlrap": 0.9, "test_lwlrap": 0.72,
                         "minutes": 0.2, "inference_ms_per_clip": 37.4}}
    row = next(line for line in _markdown(results, "final").splitlines() if line.startswith("| final"))
    assert "weighted: long; weight 0: baseline, student" in row and "| 37.4 |" in row


def test_the_training_left_is_estimated_at_the_pace_of_the_stages_before(tmp_path):
    from audiotag.config import Config
    from audiotag.engine.callbacks import duration
    from audiotag.recipes.pipeline import epoch_cost, epochs_to_train, training_left
    from audiotag.recipes.recipe import stage_config

    recipe = load_recipe(bundled_recipe("cpu-small"))
    configs = {s.name: stage_config(recipe, s, base=Config(), out=tmp_path) for s in recipe.stages
               if s.ensemble is None}
    assert list(configs) == ["baseline", "distilled"]
    base, student = configs["baseline"].train, configs["distilled"].train
    assert training_left({}, configs, tmp_path, now="baseline") == ""  # nothing has set a pace yet
    (tmp_path / "distilled" / "fold_0").mkdir(parents=True)
    (tmp_path / "distilled" / "fold_0" / "done.json").write_text("{}")  # one fold finished before a stop
    assert epoch_cost(configs["baseline"]) == 1 and epoch_cost(configs["distilled"]) == pytest.approx(1.25)
    results = {"baseline": {"kind": "train", "minutes": base.folds * base.epochs * 3 / 60}}  # 3 s an epoch
    left = (student.folds - 1) * student.epochs
    assert epochs_to_train(configs["distilled"], tmp_path / "distilled") == left
    assert epochs_to_train(configs["distilled"]) == left + student.epochs
    message = training_left(results, configs, tmp_path, now="distilled")  # a fifth of each batch test rows
    assert message == f"about {duration(left * 3 * 1.25)} of training left in the pipeline (at the 3.0 s an " \
                      "epoch of the stages before)"
    for k in range(1, student.folds):  # every fold done: nothing left, nothing said
        (tmp_path / "distilled" / f"fold_{k}").mkdir()
        (tmp_path / "distilled" / f"fold_{k}" / "done.json").write_text("{}")
    assert training_left(results, configs, tmp_path, now="distilled") == ""
    configs["later"] = configs["distilled"]  # a stage still to train after the finished one
    assert training_left(results, configs, tmp_path, now="distilled") == ""  # reused without a word
    assert training_left(results, configs, tmp_path, now="later").startswith(
        f"about {duration(student.folds * student.epochs * 3 * 1.25)} ")
