"""`audiotag report`: one self-contained HTML page, checked in a headless browser when one exists."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
import yaml

from audiotag import cli

from test_train import TINY

RECIPE = {"stages": [{"name": "baseline"}, {"name": "freqpos", "set": {"features.channels": ["logmel", "freqpos"]}},
                     {"name": "blend", "ensemble": ["baseline", "freqpos"], "blends": ["mean"]}]}
SECTIONS = ["Data", "Stages", "Per-class lwlrap (out of fold)", "Per-class lwlrap (test)", "Correlation between members",
            "Training curves", "Examples: predicted vs true tags"]


@pytest.fixture(scope="module")
def report(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    args = ["pipeline", str(root / "recipe.yaml"), "--data", str(demo_data), "--out", str(root / "p"),
            "--cache-dir", str(root / "cache"), "-q"] + [a for item in TINY + ["train.epochs=1"] for a in ("--set", item)]
    assert cli.main(args) == 0
    assert cli.main(["report", str(root / "p"), "--out", str(root / "r"), "-q"]) == 0
    return root / "r" / "index.html"


def test_the_page_has_every_section_and_only_embedded_images(report):
    text = report.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}" in text, section
    sources = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(sources) >= 7
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("baseline", "freqpos", "blend (final)"):
        assert f"<td>{stage}</td>" in text
    # lwlrap by labels per clip, out of fold and on test: the demo mixes several sounds per clip
    assert text.count("<th>labels per clip</th>") == 2 and "<td>1</td>" in text


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium found (install it, e.g. `apt-get install chromium`, to render the report in a browser)")


def test_the_page_renders_in_headless_chromium_with_every_image(report, tmp_path):
    browser = _browser()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title, dom.stderr[-2000:]
    assert title.group(1).startswith("images ok"), title.group(1)  # set by the page's own load check
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_a_moved_pipeline_is_reported_from_its_own_folders(report, tmp_path, monkeypatch):
    pipeline = report.parent.parent / "p"
    moved = tmp_path / "elsewhere" / "p"
    shutil.copytree(pipeline, moved)
    marker = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    (moved / "baseline" / "training_curves.png").write_bytes(marker)  # only the copy has this picture
    monkeypatch.chdir(tmp_path)  # and the command runs from another folder
    assert cli.main(["report", "elsewhere/p", "--out", "r", "-q"]) == 0
    text = (tmp_path / "r" / "index.html").read_text()
    assert base64.b64encode(marker).decode() in text
