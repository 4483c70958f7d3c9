import numpy as np
import pytest
import soundfile as sf

from audiotag.data.layouts import audio_files_under, load_dataset, safe_audio_path
from audiotag.data.synthetic import CLASSES
from audiotag.errors import DataError

from conftest import SMALL_DEMO, shared_path


def write_wav(path, seconds=0.5, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.3, 0.3, int(16000 * seconds)), 16000, subtype="PCM_16")


def test_kaggle_layout_of_the_demo(demo_data):
    ds = load_dataset(demo_data)
    assert ds.layout == "kaggle" and ds.vocabulary == tuple(CLASSES)
    assert [len(ds.split(s)) for s in ("curated", "noisy", "test")] == [SMALL_DEMO.n_curated, SMALL_DEMO.n_noisy,
                                                                         SMALL_DEMO.n_test]
    assert ds.test_labelled and all(c.labels for c in ds.split("test"))
    assert all(c.path.is_absolute() and c.path.is_file() for c in ds.clips)
    assert not [p for p in ds.problems if p.severity == "error"]
    multi = [c for c in ds.split("curated") if len(c.labels) > 1]
    assert multi, "the demo has multi-label curated clips"
    y = ds.label_matrix(multi)
    assert y.shape == (len(multi), len(CLASSES)) and (y.sum(1) == [len(c.labels) for c in multi]).all()


def test_real_fsdkaggle2019_metadata_without_audio():
    ds = load_dataset(shared_path("data", "fsdkaggle2019_meta"), audio=False)
    curated, noisy, test = ds.split("curated"), ds.split("noisy"), ds.split("test")
    assert (len(curated), len(noisy), len(ds.vocabulary)) == (4970, 19815, 80)
    assert sum(len(c.labels) > 1 for c in curated) == 701
    assert ds.vocabulary[0] == "Accelerating_and_revving_and_vroom"
    assert len(test) == 1120 and ds.test_labelled  # stage-1 test, labelled by test_post_competition.csv
    assert not [p for p in ds.problems if p.severity == "error"]
    assert ds.label_matrix(noisy).sum(0).tolist() == [300.0] * 80  # every noisy label appears 300 times


def test_esc50_csv_with_its_own_folds():
    folder = shared_path("data", "sources", "esc50")
    ds = load_dataset(folder)  # detected: a CSV with file and label columns next to the audio
    assert ds.layout == "csv" and len(ds.clips) == 1200 and len(ds.vocabulary) == 50
    assert ds.has_folds and {c.fold for c in ds.clips} == {1, 2, 3}
    explicit = load_dataset(csv=folder / "esc50.csv", audio_dir=folder, file_col="filename", label_col="category",
                            fold_col="fold")
    assert [c.labels for c in explicit.clips] == [c.labels for c in ds.clips]


def test_generic_csv_wrong_column_is_named_with_a_suggestion(tmp_path):
    (tmp_path / "meta.csv").write_text("filename,category\na.wav,dog\n")
    with pytest.raises(DataError, match="did you mean 'category'"):
        load_dataset(csv=tmp_path / "meta.csv", audio_dir=tmp_path, label_col="categroy")


def test_class_folders(tmp_path):
    for label in ("dog", "cat"):
        for i in range(3):
            write_wav(tmp_path / label / f"{label}{i}.wav", seed=i)
    write_wav(tmp_path / "loose.wav")
    ds = load_dataset(tmp_path)
    assert ds.layout == "folder" and ds.vocabulary == ("cat", "dog") and len(ds.clips) == 6
    assert {c.labels for c in ds.clips} == {("cat",), ("dog",)}
    assert [p.code for p in ds.problems] == ["stray-file"]


def test_urbansound8k_style_fold_folders(tmp_path):
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "UrbanSound8K.csv").write_text(
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
        "100-1.wav,100,0,1,1,1,3,dog_bark\n200-2.wav,200,0,1,1,2,8,siren\n")
    write_wav(tmp_path / "audio" / "fold1" / "100-1.wav")
    write_wav(tmp_path / "audio" / "fold2" / "200-2.wav")
    ds = load_dataset(tmp_path)
    assert [c.path.parent.name for c in ds.clips] == ["fold1", "fold2"] and ds.has_folds
    assert all(c.path.is_file() for c in ds.clips)


def test_csv_oddities_are_handled_and_reported(tmp_path):
    text = 'fname,labels\r\n a.wav , dog \r\n"b.wav","dog,cat"\r\n\r\nc.wav,cat,extra\r\n'
    (tmp_path / "train_curated.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "vocabulary.csv").write_text("0,dog\n1,cat\n")
    ds = load_dataset(tmp_path, audio=False)
    assert [(c.fname, c.labels) for c in ds.clips] == [("a.wav", ("dog",)), ("b.wav", ("dog", "cat"))]
    codes = {p.code: p for p in ds.problems}
    assert {"csv-bom", "csv-whitespace", "csv-row"} <= set(codes)
    assert codes["csv-row"].row == 5 and codes["csv-row"].fname == "c.wav"  # line numbers count blank lines
    assert codes["csv-bom"].severity == "warning"


def test_a_repeated_row_is_reported_with_its_own_label_problems(tmp_path):
    # every problem in one pass: the repeat of a.wav is one, and so is its unknown label and empty field
    (tmp_path / "train_curated.csv").write_text("fname,labels\na.wav,dog\nb.wav,cat\na.wav,dgo\nb.wav,\n")
    (tmp_path / "vocabulary.csv").write_text("0,dog\n1,cat\n")
    ds = load_dataset(tmp_path, audio=False)
    assert [(c.fname, c.labels) for c in ds.clips] == [("a.wav", ("dog",)), ("b.wav", ("cat",))]
    found = sorted((p.row, p.code) for p in ds.problems)
    assert found == [(4, "duplicate-fname"), (4, "unknown-label"), (5, "duplicate-fname"), (5, "empty-labels")]
    unknown = next(p for p in ds.problems if p.code == "unknown-label")
    assert "'dgo'" in unknown.message and unknown.hint == "did you mean 'dog'?"


def test_missing_header_non_utf8_and_empty_files(tmp_path):
    (tmp_path / "train_curated.csv").write_text("a.wav,dog\nb.wav,cat\n")
    with pytest.raises(DataError, match="looks like data, not a header"):
        load_dataset(tmp_path, audio=False)
    (tmp_path / "train_curated.csv").write_bytes(b"fname,labels\na.wav,caf\xe9\n")
    with pytest.raises(DataError, match="line 2 is not valid UTF-8"):
        load_dataset(tmp_path, audio=False)
    (tmp_path / "train_curated.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path, audio=False)


def test_vocabulary_and_submission_header_must_agree(demo_copy):
    (demo_copy / "vocabulary.csv").write_text("0,tone\n1,chirp_up\n")
    ds = load_dataset(demo_copy)
    mismatch = [p for p in ds.problems if p.code == "vocabulary-mismatch"]
    assert mismatch and not mismatch[0].skippable


def test_missing_folders_and_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="is a file"):
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(DataError, match="cannot tell the layout") as info:
        load_dataset(tmp_path)
    assert "audiotag tag" not in info.value.hint
    write_wav(tmp_path / "clip.wav")  # a flat folder of audio: no labels, but it can be tagged
    with pytest.raises(DataError, match="cannot tell the layout") as info:
        load_dataset(tmp_path)
    assert f"audiotag tag --run RUN {tmp_path}" in info.value.hint


@pytest.mark.parametrize("name, safe", [
    ("a.wav", True), ("sub/a.wav", True), ("we ird ü.wav", True), ("../a.wav", False), ("sub/../../a.wav", False),
    ("/etc/passwd", False), ("C:\\x.wav", False), ("a\\..\\b.wav", False), ("", False), ("a\x00.wav", False),
])
def test_file_names_cannot_escape_their_folder(tmp_path, name, safe):
    path = safe_audio_path(tmp_path, name)
    assert (path is not None) == safe
    if safe:
        assert tmp_path in path.parents


def test_audio_files_under_lists_audio_in_path_order_and_skips_hidden(tmp_path):
    names = ["b.wav", "a-b.WAV", "a/z.flac", "a/b/c.ogg", "a.b/x.wav", ".hidden.wav", ".git/x.wav", "notes.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = audio_files_under(tmp_path)
    expected = sorted(tmp_path / n for n in names if not n.startswith(".") and not n.endswith(".txt"))
    assert found == expected  # Path order ("a/b/c.ogg" before "a-b.WAV"), not string order
    assert [p.relative_to(tmp_path).as_posix() for p in found][:2] == ["a/b/c.ogg", "a/z.flac"]
