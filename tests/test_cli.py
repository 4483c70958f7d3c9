import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from audiotag import cli

from conftest import shared_path


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and f"audiotag {name}" in text


def test_check_exit_status_and_messages(demo_copy, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache"), "-q"]
    assert cli.main(["check", str(demo_copy), *cache]) == 0
    victim = next((demo_copy / "train_noisy").glob("*.wav"))
    victim.write_bytes(b"")
    report = tmp_path / "problems.csv"
    assert cli.main(["check", str(demo_copy), *cache, "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert victim.name in out and "empty" in out and victim.name in report.read_text()
    assert cli.main(["check", str(demo_copy), *cache, "--skip-bad"]) == 0
    assert "without the 1 bad file\n" in capsys.readouterr().out


def test_features_with_skip_bad_lists_what_it_left_out(demo_copy, tmp_path, capsys):
    victim = next((demo_copy / "train_curated").glob("*.wav"))
    victim.write_text("not audio")
    with open(demo_copy / "train_curated.csv", "a") as f:  # and a second row for it, with a label nobody knows
        f.write(f"{victim.name},no_such_label\n")
    args = ["features", str(demo_copy), "--cache-dir", str(tmp_path / "c"), "-q"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "audiotag: error:" in err and victim.name in err and "Traceback" not in err
    assert cli.main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    # one line per file, naming all of its problems
    assert "skipped 1 bad file (--skip-bad):" in out
    assert f"curated/{victim.name}: duplicate-fname, unknown-label, unreadable" in out


def test_user_errors_are_one_clear_message(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing")]) == 2
    assert cli.main(["config", "--set", "features.n_mel=3"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "did you mean 'features.n_mels'" in err and "Traceback" not in err
    assert cli.main(["check"]) == 2
    assert "no dataset given" in capsys.readouterr().err


def test_unexpected_errors_leave_a_crash_log_not_a_traceback(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli.data_commands, "cmd_config", boom)
    assert cli.main(["config"]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something broke" in err and "Traceback" not in err
    log = err.split("traceback is in ")[1].split(";")[0]
    assert "Traceback" in open(log).read()
    os.unlink(log)


def test_inspect_real_metadata_prints_the_counts(tmp_path, capsys):
    meta = shared_path("data", "fsdkaggle2019_meta")
    assert cli.main(["inspect", str(meta), "--no-audio", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "4970 curated, 19815 noisy" in out and "80 labels" in out


def test_console_script_runs(tmp_path):
    exe = shutil.which("audiotag", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the audiotag console script is not installed next to this Python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([exe, "config", "--set", "seed=5"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "seed: 5" in result.stdout


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "audiotag", "demo", "--out", str(tmp_path / "demo"), "-q"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "demo finished" in result.stdout
    tagged = next(line for line in result.stdout.splitlines() if line.startswith("[7/7] tag:"))
    assert "by the pipeline (ensemble blend)" in tagged and tagged.count(",") == 2
    assert (tmp_path / "demo" / "inspect" / "summary.md").exists()
    assert (tmp_path / "demo" / "report" / "index.html").exists()
    assert (tmp_path / "demo" / "submission.csv").read_bytes() == \
           (tmp_path / "demo" / "pipeline" / "submission.csv").read_bytes()
    assert json.loads((tmp_path / "demo" / "pipeline" / "pipeline.json").read_text())["submission_standardized"]
