"""Options and settings that used to be accepted and then crash or answer wrongly: each must now be
refused up front with the option or key named, a hint where one helps, no traceback, and no output
file written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from audiotag import cli

from test_train import TINY


def tiny_sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-options")
    args = ["train", "--data", str(demo_data), "--out", str(root / "run"), "--cache-dir", str(root / "cache"), "-q",
            *tiny_sets()]
    assert cli.main(args) == 0
    clip = sorted((demo_data / "test").glob("*.wav"))[0]
    return root, clip


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


CASES = {
    # option                              -> (args after the fixture's paths are filled in, words the message has)
    "predict --tta -3": (["predict", "{run}", "--data", "{data}", "--out", "{out}", "--tta", "-3", "-q"],
                         ["--tta", "-3"]),
    "tag --top -2": (["tag", "--run", "{run}", "{clip}", "--top", "-2"], ["--top", "-2"]),
    "tag --top 0": (["tag", "--run", "{run}", "{clip}", "--top", "0"], ["--top"]),
    "ensemble --prune nan": (["ensemble", "{run}", "{run}", "--out", "{out_dir}", "--prune", "nan", "-q"],
                             ["--prune", "nan"]),
    "ensemble --prune 2": (["ensemble", "{run}", "{run}", "--out", "{out_dir}", "--prune", "2", "-q"], ["--prune"]),
    "features --splits curated,bogus": (["features", "--data", "{data}", "--splits", "curated,bogus", "--cache-dir",
                                         "{cache}", "-q"], ["'bogus'", "curated"]),
    "--set train.lr=nan": (["config", "--set", "train.lr=nan"], ["train.lr", "finite"]),
    "--set train.mixup_prob=inf": (["config", "--set", "augment.mixup_prob=inf"], ["augment.mixup_prob", "finite"]),
    "--set seed=10**23": (["config", "--set", "seed=100000000000000000000000"], ["seed", "out of range"]),
    "--workers -1": (["check", "--data", "{data}", "--workers", "-1", "--no-audio"], ["data.num_workers", "-1"]),
    "two datasets": (["check", "{data}", "--data", "{clip}", "--no-audio"], ["two datasets"]),
    "train --out FILE": (["train", "--data", "{data}", "--out", "{file}", "--cache-dir", "{fresh_cache}", "-q"],
                         ["--out", "is a file"]),
    "predict --out under a file": (["predict", "{run}", "--data", "{data}", "--out", "{under_file}", "--cache-dir",
                                    "{fresh_cache}", "-q"], ["--out", "cannot write"]),
    "predict --out FOLDER": (["predict", "{run}", "--data", "{data}", "--out", "{folder}", "--cache-dir",
                              "{fresh_cache}", "-q"], ["--out", "is a folder"]),
    "ensemble --out FILE": (["ensemble", "{run}", "{run}", "--out", "{file}", "-q"], ["--out", "is a file"]),
    "report --out FILE": (["report", "{run}", "--out", "{file}", "-q"], ["--out", "is a file"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_option_is_refused_by_name_before_any_output(name, trained, demo_data, tmp_path, capsys):
    root, clip = trained
    template, words = CASES[name]
    out = tmp_path / "submission.csv"
    fill = {"{run}": root / "run", "{data}": demo_data, "{out}": out, "{out_dir}": tmp_path / "ens",
            "{clip}": clip, "{cache}": root / "cache"}
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    fill.update({"{file}": tmp_path / "a-file", "{under_file}": tmp_path / "a-file" / "s.csv",
                 "{folder}": tmp_path / "a-folder", "{fresh_cache}": tmp_path / "fresh-cache"})
    args = [fill.get(a, a) for a in template]
    code, text = run_cli(args, capsys)
    assert code == 2, text
    assert not (tmp_path / "fresh-cache").exists()  # refused before any feature was computed
    assert (tmp_path / "a-file").read_text() == "not a folder\n" and not any((tmp_path / "a-folder").iterdir())
    assert "audiotag: error:" in text and "Traceback" not in text and "internal error" not in text
    for word in words:
        assert word in text, (word, text)
    assert not out.exists() and not (tmp_path / "ens").exists()


def test_a_missing_fold_model_is_an_error_unless_asked_for(trained, demo_data, tmp_path, capsys):
    root, clip = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    shutil.rmtree(run / "fold_1")
    out = tmp_path / "submission.csv"
    code, text = run_cli(["predict", run, "--data", demo_data, "--out", out, "--cache-dir", root / "cache", "-q"],
                         capsys)
    assert code == 2 and "fold(s) 1" in text and "--allow-missing-folds" in text and not out.exists()
    code, text = run_cli(["tag", "--run", run, clip], capsys)
    assert code == 2 and "fold(s) 1" in text
    code, text = run_cli(["predict", run, "--data", demo_data, "--out", out, "--cache-dir", root / "cache", "-q",
                          "--allow-missing-folds"], capsys)
    assert code == 0 and "1 fold models" in text and out.exists()


def test_huge_float_samples_are_refused_by_check_and_tag(trained, tmp_path, capsys):
    root, clip = trained
    y, sr = sf.read(clip, dtype="float32")
    loud = tmp_path / "loud.wav"
    sf.write(loud, (y * 1e30).astype(np.float32), sr, subtype="FLOAT")
    code, text = run_cli(["tag", "--run", root / "run", loud, clip], capsys)
    assert code == 1 and "loud.wav" in text and "above full scale" in text and "nan" not in text.lower()
    assert str(clip) in text  # the good file is still tagged


@pytest.mark.parametrize("damage", ["binary config", "tagged config", "config list", "garbage run.json",
                                    "garbage scores.json"])
def test_a_damaged_run_folder_is_named_and_does_not_hide_the_others(damage, trained, demo_data, tmp_path, capsys):
    root, clip = trained
    runs = tmp_path / "runs"
    for name in ("good", "bad"):
        shutil.copytree(root / "run", runs / name, ignore=shutil.ignore_patterns("*.pt"))
    bad = runs / "bad"
    culprit = {"binary config": ("config.yaml", b"\x00\xff\xfe" * 50),
               "tagged config": ("config.yaml", b"!!python/object/apply:os.system ['true']\n"),
               "config list": ("config.yaml", b"- 1\n- 2\n"),
               "garbage run.json": ("run.json", b"{not json"),
               "garbage scores.json": ("scores.json", b"\x00garbage")}[damage]
    (bad / culprit[0]).write_bytes(culprit[1])
    code, text = run_cli(["runs", runs], capsys)
    assert code == 0 and "damaged" in text and culprit[0] in text
    assert text.count("good") == 1 and "Traceback" not in text
    code, text = run_cli(["predict", bad, "--data", demo_data, "--out", tmp_path / "s.csv", "-q"], capsys)
    if damage != "garbage scores.json":  # prediction does not need the scores
        assert code == 2 and culprit[0] in text and "hint:" in text and "internal error" not in text
        assert not (tmp_path / "s.csv").exists()


def test_predictions_with_a_nan_row_are_never_written(tmp_path):
    from audiotag.errors import AudiotagError
    from audiotag.runs import write_predictions

    probs = np.full((3, 2), 0.5)
    probs[1, 0] = np.nan
    out = tmp_path / "submission.csv"
    with pytest.raises(AudiotagError, match="1 clip.*NaN or infinite.*b.wav"):
        write_predictions(out, ["a.wav", "b.wav", "c.wav"], ("x", "y"), probs)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    probs[1, 0] = 0.25
    write_predictions(out, ["a.wav", "b.wav", "c.wav"], ("x", "y"), probs)
    assert out.read_text().splitlines()[2] == "b.wav,0.250000,0.500000"


def test_missing_and_damaged_prediction_files_are_told_apart(tmp_path):
    from audiotag.errors import DataError
    from audiotag.runs import read_predictions

    with pytest.raises(DataError) as missing:
        read_predictions(tmp_path / "test_predictions.csv")
    assert "does not exist" in str(missing.value) and "damaged" not in missing.value.hint
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"fname,dog\n\xff\xfe,0.5\n")
    with pytest.raises(DataError) as damaged:
        read_predictions(bad)
    assert "UnicodeDecodeError" in str(damaged.value) and "damaged" in damaged.value.hint


def _csv_dataset(root, rows, *, extra_files=0):
    audio = root / "wavs"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in rows:
        sf.write(audio / name, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    for i in range(extra_files):
        sf.write(audio / f"unlisted{i:03d}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    table = root / "labels.csv"
    table.write_text("path,tags\n" + "".join(f'{n},"{t}"\n' for n, t in rows))
    return table, audio


def test_a_wrong_label_separator_is_pointed_out(tmp_path, capsys):
    rows = [("a.wav", "dog"), ("b.wav", "cat"), ("c.wav", "dog;cat"), ("d.wav", "bird"), ("e.wav", "cat;bird")]
    table, audio = _csv_dataset(tmp_path, rows)
    code, text = run_cli(["check", "--csv", table, "--audio-dir", audio], capsys)
    assert code == 0 and "joined-labels" in text and "--label-sep ';'" in text and "'cat;bird'" in text
    code, text = run_cli(["check", "--csv", table, "--audio-dir", audio, "--label-sep", ";"], capsys)
    assert code == 0 and "joined-labels" not in text and "[warning" not in text


def test_unlisted_files_are_counted_once_and_can_be_declared_unselected(tmp_path, capsys):
    rows = [(f"{c}{i}.wav", c) for c in ("dog", "cat") for i in range(3)]
    table, audio = _csv_dataset(tmp_path, rows, extra_files=40)
    code, text = run_cli(["check", "--csv", table, "--audio-dir", audio], capsys)
    assert code == 1 and text.count("[error stray-file]") == 5
    assert "and 35 more errors of this kind (stray-file)" in text and "--only-listed" in text
    code, text = run_cli(["check", "--csv", table, "--audio-dir", audio, "--only-listed"], capsys)
    assert code == 0 and "stray-file" not in text


@pytest.mark.parametrize("damage", ["done.json", "oof csv text", "oof csv short row", "oof csv nan",
                                    "checkpoint of another width"])
def test_damaged_parts_of_a_run_are_named_with_what_to_do(damage, trained, demo_data, tmp_path, capsys):
    import torch

    root, clip = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    oof = run / "oof_predictions.csv"
    lines = oof.read_text().splitlines()
    if damage == "done.json":
        (run / "fold_0" / "done.json").write_text("{garbage")
        args, culprit = ["merge", run, "-q"], "fold_0"
    elif damage.startswith("oof csv"):
        cells = lines[3].split(",")
        cells[-1] = {"oof csv text": "abc", "oof csv short row": "", "oof csv nan": "nan"}[damage]
        lines[3] = ",".join(cells if damage != "oof csv short row" else cells[:-1])
        oof.write_text("\n".join(lines) + "\n")
        args, culprit = ["ensemble", run, root / "run", "--out", tmp_path / "ens", "-q"], "oof_predictions.csv, line 4"
    else:
        state = torch.load(run / "fold_0" / "best.pt", weights_only=True)
        state["model"] = {k: torch.cat([v, v]) if v.ndim else v for k, v in state["model"].items()}
        torch.save(state, run / "fold_0" / "best.pt")
        args, culprit = ["tag", "--run", run, clip], "best.pt"
    code, text = run_cli(args, capsys)
    assert code == 2, text
    assert culprit in text and "hint:" in text and "internal error" not in text and "Traceback" not in text
    assert not (tmp_path / "ens").exists()
