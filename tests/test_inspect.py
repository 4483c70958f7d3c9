import json

import matplotlib.image as mpimg
import numpy as np

from audiotag.data.layouts import load_dataset
from audiotag.report.inspect import _js_divergence, inspect_dataset

from conftest import SMALL_DEMO, shared_path


def test_inspect_the_demo_with_audio(demo_data, tmp_path):
    out = tmp_path / "inspect"
    summary = inspect_dataset(load_dataset(demo_data), out, progress=False)
    assert summary["splits"]["curated"]["clips"] == SMALL_DEMO.n_curated
    assert summary["splits"]["noisy"]["duration_s"]["max"] <= SMALL_DEMO.max_duration_s + 0.01
    assert set(summary["images"]) == {"label_counts", "labels_per_clip", "shift", "durations", "examples"}
    for name in summary["images"].values():
        image = mpimg.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01  # a real picture
    md = (out / "summary.md").read_text()
    assert all(f"]({name})" in md for name in summary["images"].values())
    assert json.loads((out / "summary.json").read_text())["vocabulary_size"] == 14


def test_inspect_real_metadata_without_audio(tmp_path):
    summary = inspect_dataset(load_dataset(shared_path("data", "fsdkaggle2019_meta"), audio=False), tmp_path,
                              audio=False, progress=False)
    s = summary["splits"]
    assert (s["curated"]["clips"], s["noisy"]["clips"], summary["vocabulary_size"]) == (4970, 19815, 80)
    assert s["curated"]["multi_label_clips"] == 701
    assert abs(s["curated"]["mean_labels_per_clip"] - 1.16) < 0.005  # the dataset's documented statistics
    assert abs(s["noisy"]["mean_labels_per_clip"] - 1.21) < 0.005
    per_clip = s["curated"]["labels_per_clip"]  # documented: 4269 / 627 / 69 / 5 clips with 1 / 2 / 3 / 4+ labels
    assert [per_clip["1"], per_clip["2"], per_clip["3"]] == [4269, 627, 69]
    assert sum(n for k, n in per_clip.items() if int(k) >= 4) == 5
    assert "examples" not in summary["images"] and "durations" not in summary["images"]
    md = (tmp_path / "summary.md").read_text()
    assert "4970" in md
    # the noisy set has 300 clips of every label: said once, not as a list of ties
    assert (s["noisy"]["imbalance"]["min_count"], s["noisy"]["imbalance"]["max_count"]) == (300, 300)
    assert "- **noisy**: every label has 300 clips." in md
    assert "- **curated**: most frequent" in md and "least frequent Accordion (47)" in md


def test_js_divergence_bounds():
    assert _js_divergence(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == 0.0  # same shares
    assert abs(_js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) - 1.0) < 1e-12  # disjoint
    assert 0 < _js_divergence(np.array([3.0, 1.0]), np.array([1.0, 3.0])) < 1
