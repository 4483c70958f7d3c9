"""Using what was trained: runs, ensembles and pipelines predict new audio, from the CLI and Python."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

import audiotag
from audiotag import cli
from audiotag.ensemble.estimators import BLENDERS, make_blender
from audiotag.ensemble.persist import load_blender, save_blender
from audiotag.errors import DataError
from audiotag.predictor import Predictor, events_from_scores, load_predictor

from test_train import TINY

RECIPE = {"set": {"train.epochs": 2},
          "stages": [{"name": "baseline"}, {"name": "freqpos", "set": {"features.channels": ["logmel", "freqpos"]}},
                     {"name": "blend", "ensemble": ["baseline", "freqpos"], "blends": ["mean", "stack_logistic"]}]}


@pytest.fixture(scope="module")
def pipeline(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    args = ["pipeline", str(root / "recipe.yaml"), "--data", str(demo_data), "--out", str(root / "p"),
            "--cache-dir", str(root / "cache"), "-q"] + [a for s in TINY for a in ("--set", s)]
    assert cli.main(args) == 0
    return root


def read(path):
    return pd.read_csv(path, index_col="fname")


@pytest.mark.parametrize("name", sorted(BLENDERS))
def test_a_saved_blender_predicts_what_the_fitted_one_did(name, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(0.01, 0.99, (60, 3, 5))
    y = (rng.uniform(size=(60, 5)) < 0.3).astype(float)
    y[:, 4] = 0  # a class never present: the logistic stack keeps a constant for it
    fitted = make_blender(name).fit(X, y)
    save_blender(tmp_path, name, fitted, members=["a", "b", "c"])
    loaded, members = load_blender(tmp_path)
    assert members == ["a", "b", "c"]
    X_new = rng.uniform(0.01, 0.99, (20, 3, 5))
    np.testing.assert_allclose(loaded.predict_proba(X_new), fitted.predict_proba(X_new), atol=1e-12)
    with np.load(tmp_path / "blender.npz", allow_pickle=False) as saved:  # numbers only, nothing to execute
        assert all(saved[k].dtype.kind == "f" for k in saved.files)


@pytest.mark.parametrize("stage", ["p", "p/blend", "p/baseline"])
def test_predict_on_the_pipelines_own_test_set_writes_its_submission_again(stage, pipeline, demo_data, tmp_path,
                                                                            capsys):
    folder = pipeline / stage
    out = tmp_path / "again.csv"
    assert cli.main(["predict", str(folder), "--data", str(demo_data), "--out", str(out),
                     "--cache-dir", str(pipeline / "cache"), "-q"]) == 0
    expected = folder / ("test_predictions.csv" if stage == "p/baseline" else "submission.csv")
    a, b = read(out), read(expected)
    assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    kind = {"p": "pipeline", "p/blend": "ensemble", "p/baseline": "run"}[stage]
    assert f"with the {kind}" in capsys.readouterr().out


def test_the_python_predictor_tags_files_and_arrays_as_the_submission_does(pipeline, demo_data):
    predictor = load_predictor(pipeline / "p")
    assert isinstance(predictor, Predictor) and audiotag.load_predictor is load_predictor
    submission = read(pipeline / "p" / "submission.csv")
    assert predictor.labels == tuple(submission.columns)
    files = sorted((demo_data / "test").glob("*.wav"))[:4]
    by_file = predictor.predict(files)
    assert list(by_file.index) == [str(f) for f in files] and list(by_file.columns) == list(submission.columns)
    np.testing.assert_allclose(by_file.values, submission.loc[[f.name for f in files]].values, atol=1e-5)
    # the same audio as arrays, one of them at another sample rate: resampled as the runs were trained
    y, sr = sf.read(files[0], dtype="float32")
    arrays = predictor.predict([y, y], sample_rate=sr)
    assert list(arrays.index) == ["array_0", "array_1"]
    np.testing.assert_allclose(arrays.values[0], by_file.values[0], atol=1e-6)
    with pytest.raises(audiotag.AudiotagError, match="sample_rate"):
        predictor.predict(y)


def test_a_missing_or_retrained_member_is_a_clear_error(pipeline, tmp_path, capsys):
    copy = tmp_path / "p"
    shutil.copytree(pipeline / "p", copy)
    load_predictor(copy)  # a moved copy finds its members beside it
    oof = copy / "freqpos" / "oof_predictions.csv"
    oof.write_text(oof.read_text().replace("0.", "0.0", 1))  # as if the member had been trained again
    with pytest.raises(DataError, match="member freqpos .* changed since the ensemble"):
        load_predictor(copy)
    shutil.rmtree(copy / "freqpos")
    summary = json.loads((copy / "blend" / "ensemble.json").read_text())
    summary["member_records"]["freqpos"]["absolute"] = str(tmp_path / "nowhere")
    (copy / "blend" / "ensemble.json").write_text(json.dumps(summary))
    code = cli.main(["tag", "--run", str(copy), str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert code == 2 and "member freqpos of the ensemble" in err and "is missing" in err and "hint:" in err


def test_events_are_found_within_one_hop_of_where_they_are():
    hop = 0.25
    times = np.arange(hop / 2, 30, hop)
    truth = {"dog": [(3.0, 7.5), (20.0, 22.0)], "rain": [(10.0, 18.0)]}
    # a score that is the share of a 2-second window the event fills: above 0.5 while the centre is inside
    scores = pd.DataFrame({label: [sum(max(min(t + 1, b) - max(t - 1, a), 0) for a, b in spans) / 2 for t in times]
                           for label, spans in truth.items()}, index=pd.Index(times, name="time_s"))
    events = events_from_scores(scores, hop_s=hop, threshold=0.5)
    found = {(e.label, e.onset_s, e.offset_s) for e in events.itertuples()}
    assert len(found) == 3
    for label, spans in truth.items():
        for onset, offset in spans:
            match = [f for f in found if f[0] == label and abs(f[1] - onset) <= hop and abs(f[2] - offset) <= hop]
            assert match, (label, onset, offset, found)
    assert events_from_scores(scores, hop_s=hop, threshold=0.5, min_duration_s=3.0)["label"].tolist() == \
        ["dog", "rain"]


def test_a_timeline_of_a_long_recording_from_the_cli(pipeline, demo_data, tmp_path, capsys):
    clips = sorted((demo_data / "test").glob("*.wav"))[:6]
    parts = [sf.read(c, dtype="float32")[0] for c in clips]
    sr = sf.info(clips[0]).samplerate
    gap = np.zeros(sr, np.float32)
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([x for p in parts for x in (p, gap)]), sr)
    assert cli.main(["tag", "--run", str(pipeline / "p"), "--timeline", str(long), "--hop-seconds", "0.5",
                     "--threshold", "0.3", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "events above 0.3" in out
    scores = pd.read_csv(tmp_path / "t" / "long_scores.csv", index_col="time_s")
    duration = sf.info(long).duration
    assert scores.index[0] == 0.25 and duration - 0.5 < scores.index[-1] <= duration
    assert scores.values.min() >= 0 and scores.values.max() <= 1
    events = json.loads((tmp_path / "t" / "long_events.json").read_text())
    assert all(0 <= e["onset_s"] < e["offset_s"] <= duration + 0.25 and e["peak"] >= 0.3 for e in events)
    assert (tmp_path / "t" / "long.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_onnx_models_predict_what_the_fold_models_do(pipeline, tmp_path, capsys):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    import torch

    out = tmp_path / "exported"
    assert cli.main(["export", str(pipeline / "p"), "--format", "onnx", "--out", str(out), "-q"]) == 0
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert ensemble["members"] == ["baseline", "freqpos"] and (out / "blender.npz").exists()
    predictor = load_predictor(pipeline / "p")
    rng = np.random.default_rng(0)
    for (scorer, _), member in zip(predictor.scorer.members, ensemble["members"]):
        card = json.loads((out / member / "model.json").read_text())
        assert card["labels"] == list(predictor.labels)
        assert card["logmel_reference"]["melspectrogram"]["n_mels"] == card["input"]["bands"]
        for frames in (card["windows"]["frames"], 37):  # frames are dynamic
            x = rng.normal(-40, 15, (3, len(card["input"]["channels"]), card["input"]["bands"], frames))
            x = x.astype(np.float32)
            for k, model in zip(scorer.run.finished_folds(), scorer.models):
                session = ort.InferenceSession(str(out / member / f"fold_{k}.onnx"))
                got = session.run(None, {"features": x})[0]
                with torch.no_grad():
                    expected = torch.sigmoid(model(torch.from_numpy(x))["logits"]).numpy()
                assert np.abs(got - expected).max() < 1e-3


class BandDetector:
    """A stand-in model that hears tones: label i's logit grows with the share of the window's frames
    in which mel band ``bands[i]`` is within 20 dB of the recording's loudest bin."""

    def __init__(self, bands, n_labels):
        self.bands, self.n_labels = bands, n_labels

    def __call__(self, x):
        import torch

        logits = torch.full((x.shape[0], self.n_labels), -10.0)
        for i, band in enumerate(self.bands):
            share = (x[:, 0, band, :] > -20).float().mean(dim=1)
            logits[:, i] = 20 * (share - 0.5)
        return {"logits": logits}

    def eval(self):
        return self


def test_a_timeline_finds_known_events_in_a_generated_recording_within_a_hop(pipeline, tmp_path):
    from audiotag.inference.scorer import Decoded

    sr, hop = 16000, 0.25
    t = np.arange(40 * sr) / sr
    truth = [(0, 3.0, 8.0, 1000.0), (1, 12.5, 20.0, 3000.0), (0, 26.0, 33.5, 1000.0)]
    y = 0.001 * np.random.default_rng(0).standard_normal(len(t))
    for _, onset, offset, freq in truth:
        inside = (t >= onset) & (t < offset)
        y[inside] += 0.5 * np.sin(2 * np.pi * freq * t[inside])
    y = y.astype(np.float32)
    predictor = load_predictor(pipeline / "p" / "baseline")
    scorer = predictor.scorer
    bands = []
    for freq in (1000.0, 3000.0):  # the mel band each tone lands in, from the run's own front-end
        tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(sr) / sr)).astype(np.float32)
        bands.append(int(scorer.features(Decoded("tone", tone[:, None], sr))[0].mean(axis=1).argmax()))
    scorer.models = [BandDetector(bands, len(predictor.labels))]
    timeline = predictor.timeline(y, sample_rate=sr, hop_seconds=hop, threshold=0.5)
    assert len(timeline.events) == len(truth), timeline.events
    for (label, onset, offset, _), event in zip(truth, timeline.events.itertuples()):
        assert event.label == predictor.labels[label]
        assert abs(event.onset_s - onset) <= hop and abs(event.offset_s - offset) <= hop, (event, onset, offset)
    assert timeline.window_s == pytest.approx(scorer.window_seconds())


def test_members_a_weighted_blend_gives_no_weight_are_not_run(pipeline, tmp_path):
    copy = tmp_path / "p"
    shutil.copytree(pipeline / "p", copy)
    members = ["baseline", "freqpos"]
    fitted = make_blender("weighted")
    fitted.weights_ = np.array([1.0, 0.0])
    save_blender(copy / "blend", "weighted", fitted, members=members)
    shutil.rmtree(copy / "freqpos")  # not needed: its weight is 0
    summary = json.loads((copy / "blend" / "ensemble.json").read_text())
    summary["member_records"]["freqpos"]["absolute"] = str(tmp_path / "nowhere")
    (copy / "blend" / "ensemble.json").write_text(json.dumps(summary))
    predictor = load_predictor(copy)
    assert [scorer.run.dir.name for scorer, _ in predictor.scorer.members] == ["baseline"]
