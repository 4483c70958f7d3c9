"""A generated corpus of bad inputs across every subcommand: each must end with a clear message.

Every case asserts: the exit status (2 for a usage or input error, 1 where the command's own
verdict is "the data has problems"), the culprit (option, key, file) named in the message, a hint
(an ``hint:`` line, or argparse's usage line for a malformed command line), no traceback, no
internal error, and no output file left that looks complete.
"""

from __future__ import annotations

import shutil

import pytest

from audiotag import cli

from test_train import TINY

MISSING = "{tmp}/no-such-thing"


def _files(root):
    """Bad files and folders the cases point at."""
    (root / "a-file.txt").write_text("just text\n")
    (root / "empty-dir").mkdir(exist_ok=True)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown-key.yaml").write_text("train:\n  epohcs: 3\n")
    (root / "wrong-type.yaml").write_text("train:\n  epochs: many\n")
    (root / "nan.yaml").write_text("train:\n  lr: .nan\n")
    (root / "tagged.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    (root / "no-columns.csv").write_text("a,b\n1,2\n")
    (root / "empty.csv").write_text("")
    (root / "sub.csv").write_text("fname,x\nclip.wav,0.5\n")


DATA_COMMANDS = {  # subcommand -> the arguments that complete it apart from the dataset
    "check": [],
    "inspect": ["--out", "{tmp}/inspect-out"],
    "features": ["--cache-dir", "{tmp}/cache"],
    "train": ["--out", "{tmp}/train-out", "--cache-dir", "{tmp}/cache"],
    "predict": ["{run}", "--out", "{tmp}/s.csv", "--cache-dir", "{tmp}/cache"],
    "pipeline": ["demo", "--out", "{tmp}/pipeline-out", "--cache-dir", "{tmp}/cache"],
    "ablate": ["--out", "{tmp}/ablate-out", "--cache-dir", "{tmp}/cache", "--strategies", "curated"],
    "audit": ["{run}", "--out", "{tmp}/audit-out", "--cache-dir", "{tmp}/cache"],
    "bench": ["features", "--limit", "2"],
}
CONFIG_COMMANDS = ["check", "inspect", "features", "train", "pipeline", "ablate", "config", "bench"]
RUN_COMMANDS = {  # subcommand -> arguments around the run folder ({target})
    "merge": ["merge", "{target}"],
    "predict": ["predict", "{target}", "--data", "{data}", "--out", "{tmp}/s.csv"],
    "tag": ["tag", "--run", "{target}", "{clip}"],
    "audit": ["audit", "{target}"],
    "report": ["report", "{target}", "--out", "{tmp}/report-out"],
    "export": ["export", "{target}", "--out", "{tmp}/export-out"],
    "ensemble": ["ensemble", "{target}", "{run}", "--out", "{tmp}/ens-out"],
}
BAD_DATA = {"missing folder": (MISSING, "no-such-thing"), "a file": ("{tmp}/a-file.txt", "a-file.txt"),
            "an empty folder": ("{tmp}/empty-dir", "empty-dir")}
BAD_CSV = {"missing csv": (MISSING + ".csv", "no-such-thing"), "csv without columns": ("{tmp}/no-columns.csv", "no-columns.csv"),
           "empty csv": ("{tmp}/empty.csv", "empty.csv"), "binary csv": ("{tmp}/binary.bin", "binary.bin")}
BAD_CONFIG = {"missing": (MISSING + ".yaml", "no-such-thing"), "binary": ("{tmp}/binary.bin", "binary.bin"),
              "a list": ("{tmp}/list.yaml", "list.yaml"), "unknown key": ("{tmp}/unknown-key.yaml", "epohcs"),
              "wrong type": ("{tmp}/wrong-type.yaml", "train.epochs"), "nan": ("{tmp}/nan.yaml", "train.lr"),
              "python tag": ("{tmp}/tagged.yaml", "tagged.yaml")}
BAD_SET = {"unknown key": ("train.epohcs=3", "train.epohcs"), "no value": ("train.epochs", "train.epochs"),
           "wrong type": ("train.epochs=many", "train.epochs"), "nan": ("train.lr=nan", "train.lr"),
           "out of range": ("train.folds=1", "train.folds"), "unknown section": ("trian.epochs=3", "trian")}
BAD_RUN = {"missing": (MISSING, "no-such-thing"), "a file": ("{tmp}/a-file.txt", "a-file.txt"),
           "an empty folder": ("{tmp}/empty-dir", "empty-dir"), "a dataset folder": ("{data}", "data")}
NUMBERS = [  # (arguments, culprit)
    (["tag", "--run", "{run}", "{clip}", "--top", "-2"], "--top"),
    (["tag", "--run", "{run}", "{clip}", "--top", "x"], "--top"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--hop-seconds", "0"], "--hop-seconds"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--hop-seconds", "nan"], "--hop-seconds"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--threshold", "1.5"], "--threshold"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--threshold", "0"], "--threshold"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--min-duration", "-1"], "--min-duration"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--min-duration", "nan"], "--min-duration"),
    (["predict", "{run}", "--data", "{data}", "--out", "{tmp}/s.csv", "--tta", "-1"], "--tta"),
    (["predict", "{run}", "--data", "{data}", "--out", "{tmp}/s.csv", "--tta", "two"], "--tta"),
    (["ensemble", "{run}", "{run}", "--out", "{tmp}/ens-out", "--prune", "nan"], "--prune"),
    (["ensemble", "{run}", "{run}", "--out", "{tmp}/ens-out", "--prune", "-3"], "--prune"),
    (["ensemble", "{run}", "{run}", "--out", "{tmp}/ens-out", "--blends", "mean,bogus"], "bogus"),
    (["ensemble", "{run}", "--out", "{tmp}/ens-out"], "two runs"),
    (["check", "--data", "{data}", "--workers", "-1"], "data.num_workers"),
    (["check", "--data", "{data}", "--workers", "many"], "--workers"),
    (["features", "--data", "{data}", "--workers", "1000", "--cache-dir", "{tmp}/cache"], "data.num_workers"),
    (["features", "--data", "{data}", "--splits", "curated,bogus", "--cache-dir", "{tmp}/cache"], "bogus"),
    (["ablate", "--data", "{data}", "--out", "{tmp}/ablate-out", "--seeds", "a,b"], "--seeds"),
    (["ablate", "--data", "{data}", "--out", "{tmp}/ablate-out", "--seeds", "-1"], "seed"),
    (["ablate", "--data", "{data}", "--out", "{tmp}/ablate-out", "--strategies", "curated,bogus"], "bogus"),
    (["pipeline", "demo", "--data", "{data}", "--out", "{tmp}/pipeline-out", "--budget-minutes", "0"], "budget"),
    (["pipeline", "demo", "--data", "{data}", "--out", "{tmp}/pipeline-out", "--budget-minutes", "nan"], "budget"),
    (["pipeline", "no-such-recipe", "--data", "{data}", "--out", "{tmp}/pipeline-out"], "no-such-recipe"),
    (["pipeline", "{tmp}/list.yaml", "--data", "{data}", "--out", "{tmp}/pipeline-out"], "list.yaml"),
    (["bench", "features", "--data", "{data}", "--limit", "-1"], "--limit"),
    (["inspect", "--data", "{data}", "--out", "{tmp}/inspect-out", "--max-examples", "-1"], "--max-examples"),
    (["demo", "--out", "{tmp}/demo-out", "--seed", "-1"], "--seed"),
    (["train", "--data", "{data}", "--out", "{tmp}/train-out", "--fold", "-1", "--cache-dir", "{tmp}/cache"], "--fold"),
    (["train", "--data", "{data}", "--fold", "0", "--cache-dir", "{tmp}/cache"], "--out"),
    (["train", "--resume", MISSING], "no-such-thing"),
]
OUTPUTS = [  # an --out (or --report) that cannot be written: a file where a folder goes, a path under a file
    (["inspect", "--data", "{data}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["train", "--data", "{data}", "--out", "{tmp}/a-file.txt", "--cache-dir", "{tmp}/cache"], "a-file.txt"),
    (["predict", "{run}", "--data", "{data}", "--out", "{tmp}/a-file.txt/s.csv"], "a-file.txt"),
    (["predict", "{run}", "--data", "{data}", "--out", "{tmp}/empty-dir"], "empty-dir"),
    (["ensemble", "{run}", "{run}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["pipeline", "demo", "--data", "{data}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["report", "{run}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["ablate", "--data", "{data}", "--out", "{tmp}/a-file.txt", "--strategies", "curated"], "a-file.txt"),
    (["audit", "{run}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["export", "{run}", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["tag", "--run", "{run}", "{clip}", "--timeline", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
    (["check", "--data", "{data}", "--report", "{tmp}/a-file.txt/problems.csv"], "a-file.txt"),
    (["demo", "--out", "{tmp}/a-file.txt"], "a-file.txt"),
]
SCORE = [  # score SUBMISSION --truth TRUTH
    (["score", MISSING + ".csv", "--truth", "{truth}"], "no-such-thing"),
    (["score", "{tmp}/sub.csv", "--truth", MISSING + ".csv"], "no-such-thing"),
    (["score", "{tmp}/binary.bin", "--truth", "{truth}"], "binary.bin"),
    (["score", "{tmp}/empty.csv", "--truth", "{truth}"], "empty.csv"),
    (["score", "{tmp}/sub.csv", "--truth", "{truth}"], "sub.csv"),
    (["score", "{tmp}/empty-dir", "--truth", "{truth}"], "empty-dir"),
    (["score", "{tmp}/sub.csv", "--truth", "{tmp}/binary.bin"], "binary.bin"),
]


def _cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for cmd, rest in DATA_COMMANDS.items():
        for what, (path, culprit) in BAD_DATA.items():
            cases.append((f"{cmd}: --data {what}", [cmd, "--data", path, *rest], culprit))
        for what, (path, culprit) in BAD_CSV.items():
            cases.append((f"{cmd}: --csv {what}", [cmd, "--csv", path, "--audio-dir", "{data}", *rest], culprit))
    for cmd in CONFIG_COMMANDS:
        base = DATA_COMMANDS.get(cmd, [])
        data = ["--data", "{data}"] if cmd in DATA_COMMANDS else []
        for what, (path, culprit) in BAD_CONFIG.items():
            cases.append((f"{cmd}: --config {what}", [cmd, *data, "--config", path, *base], culprit))
        for what, (setting, culprit) in BAD_SET.items():
            cases.append((f"{cmd}: --set {what}", [cmd, *data, "--set", setting, *base], culprit))
    for cmd, template in RUN_COMMANDS.items():
        for what, (path, culprit) in BAD_RUN.items():
            cases.append((f"{cmd}: run folder {what}", [path if a == "{target}" else a for a in template], culprit))
    for args, culprit in NUMBERS + OUTPUTS + SCORE:
        cases.append((" ".join(_short(a) for a in args), args, culprit))
    return cases


def _short(arg: str) -> str:
    """A readable, distinct name for an argument: paths by their last part."""
    for key in ("{tmp}/", "{run}", "{data}", "{clip}", "{truth}"):
        arg = arg.replace(key, "" if key == "{tmp}/" else key.strip("{}").upper())
    return arg


CASES = _cases()


@pytest.fixture(scope="module")
def world(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-world")
    args = ["train", "--data", str(demo_data), "--out", str(root / "run"), "--cache-dir", str(root / "cache"), "-q",
            *[a for s in TINY for a in ("--set", s)]]
    assert cli.main(args) == 0
    return {"run": root / "run", "data": demo_data, "clip": sorted((demo_data / "test").glob("*.wav"))[0],
            "truth": demo_data / "test_labels.csv"}


def test_the_corpus_is_large_and_distinct():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)) and len(names) >= 200
    assert {args[0] for _, args, _ in CASES} >= {"demo", "check", "inspect", "features", "train", "merge", "predict",
                                                  "score", "ensemble", "pipeline", "report", "ablate", "audit", "tag",
                                                  "config", "bench", "export"}


@pytest.mark.parametrize("name", [name for name, _, _ in CASES])
def test_a_bad_input_ends_in_one_clear_message(name, world, tmp_path, capsys, monkeypatch):
    _, template, culprit = next(c for c in CASES if c[0] == name)
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # what a command writes by default lands where it is checked
    fill = {"{tmp}": str(tmp_path), "{run}": str(world["run"]), "{data}": str(world["data"]),
            "{clip}": str(world["clip"]), "{truth}": str(world["truth"])}
    args = []
    for a in template:
        for key, value in fill.items():
            a = a.replace(key, value)
        args.append(a)
    before = {p for p in tmp_path.rglob("*")}
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse: a malformed command line
        code = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert code in (1, 2), (code, text)
    assert "Traceback" not in text and "internal error" not in text, text
    assert culprit in text, (culprit, text)
    assert "hint:" in text or "usage:" in text, text
    made = {p for p in tmp_path.rglob("*")} - before
    left = sorted(str(p.relative_to(tmp_path)) for p in made if "cache" not in p.parts)
    assert not left, left  # nothing written: no half-made file, and no empty output folder either
    shutil.rmtree(tmp_path, ignore_errors=True)
