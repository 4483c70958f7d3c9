import csv
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from audiotag.data.check import check_dataset, validate
from audiotag.data.layouts import load_dataset
from audiotag.errors import ValidationFailed


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def plant_faults(root):
    """The issue's list of faults, planted in train_curated; returns (code, fname) for each."""
    header, rows = read_rows(root / "train_curated.csv")
    audio = root / "train_curated"
    names = [r[0] for r in rows]
    data = (audio / names[0]).read_bytes()
    (audio / names[0]).write_bytes(data[: len(data) // 3])  # truncated wav
    (audio / names[1]).write_bytes(b"")  # zero-byte wav
    (audio / names[2]).write_text("this is a text file, not audio\n")  # text named .wav
    sf.write(audio / names[3], np.zeros(8000), 16000, subtype="PCM_16")  # all-zero clip
    rows[4][1] = "definitely_not_a_label"  # unknown label
    rows.append([names[5], rows[5][1]])  # duplicate fname row
    rows.append(["0000dead.wav", rows[6][1]])  # row without a file
    sf.write(audio / "stray000.wav", np.full(8000, 0.1), 16000, subtype="PCM_16")  # file without a row
    rows.append(["../x.wav", rows[6][1]])  # escapes the audio folder
    write_rows(root / "train_curated.csv", header, rows)
    return {("truncated", names[0]), ("empty", names[1]), ("unreadable", names[2]), ("silent", names[3]),
            ("unknown-label", names[4]), ("duplicate-fname", names[5]), ("missing-file", "0000dead.wav"),
            ("stray-file", "stray000.wav"), ("unsafe-path", "../x.wav")}


def test_every_planted_fault_of_the_tiny_benchmark_is_named(tiny_bench, tmp_path):
    root = tmp_path / "faulty"
    shutil.copytree(tiny_bench, root)
    planted = plant_faults(root)
    report = check_dataset(load_dataset(root), cache_dir=tmp_path / "cache")
    found = {(p.code, p.fname) for p in report.errors}
    assert found == planted  # each one, and nothing else
    text = report.format()
    for code, fname in planted:
        assert fname in text
    assert not report.ok() and report.ok(skip_bad=True)
    with pytest.raises(ValidationFailed):
        validate(load_dataset(root), cache_dir=tmp_path / "cache")
    kept, _ = validate(load_dataset(root), skip_bad=True, cache_dir=tmp_path / "cache")
    bad = {f for _, f in planted}
    assert not [c for c in kept.clips if c.fname in bad]
    assert len(kept.split("curated")) == 150 - 6  # 4 bad files, 1 bad label, and both rows of the duplicated name
    assert {p.fname for p in kept.skipped} == bad


def test_clean_demo_passes_and_verdicts_are_cached(demo_data, cache_dir, monkeypatch):
    from audiotag.audio import inventory

    ds = load_dataset(demo_data)
    report = check_dataset(ds, cache_dir=cache_dir)
    assert report.ok() and not report.errors and report.audio_checked
    assert len(report.audio) == len(ds.clips) and len(set(report.digests.values())) == len(ds.clips)
    monkeypatch.setattr(inventory, "examine", lambda *a, **k: pytest.fail("a cached verdict was examined again"))
    again = check_dataset(ds, cache_dir=cache_dir)
    assert again.digests == report.digests and again.audio == report.audio


def test_the_inventory_answers_only_for_unchanged_files_and_this_version_of_the_checks(tmp_path, monkeypatch):
    from audiotag.audio import inventory
    from audiotag.audio.inventory import AudioVerdict, FileStat, Inventory
    from audiotag.audio.io import AudioInfo

    info = AudioInfo(16000, 1, 16000, "PCM_16", "WAV", -3.0)
    stats = [FileStat(f"/data/{i}.wav", 100 + i, 7, i) for i in range(1200)]  # more than one statement's worth
    verdicts = [AudioVerdict(f"{i:032x}", info) if i % 2 else AudioVerdict(f"{i:032x}", None, "empty", "0 bytes", "")
                for i in range(1200)]
    with Inventory(tmp_path / "inventory.sqlite") as db:
        db.record(list(zip(stats, verdicts)))
        changed = [stats[0], FileStat(stats[1].path, 999, 7, 1), FileStat(stats[2].path, 102, 8, 2),
                   FileStat(stats[3].path, 103, 7, 99), FileStat("/data/new.wav", 1, 1, 1)]
        assert db.digests_of(changed) == {stats[0].path: verdicts[0].digest}
        assert db.digests_of(stats) == {s.path: v.digest for s, v in zip(stats, verdicts)}
        assert db.verdicts_of({v.digest for v in verdicts} | {"unknown"}) == {v.digest: v for v in verdicts}
        monkeypatch.setattr(inventory, "CHECK_VERSION", inventory.CHECK_VERSION + 1)
        assert db.verdicts_of({verdicts[1].digest}) == {}


def test_a_changed_file_is_checked_again(demo_copy, cache_dir):
    ds = load_dataset(demo_copy)
    clip = ds.split("curated")[0]
    assert check_dataset(ds, cache_dir=cache_dir).ok()
    clip.path.write_bytes(clip.path.read_bytes()[:100])  # same name, new (broken) content
    report = check_dataset(load_dataset(demo_copy), cache_dir=cache_dir)
    assert [(p.code, p.fname) for p in report.errors] == [("truncated", clip.fname)]


def test_stop_early_skips_decoding_when_cheap_checks_fail(demo_copy, cache_dir):
    header, rows = read_rows(demo_copy / "train_curated.csv")
    rows[0][1] = "nope"
    write_rows(demo_copy / "train_curated.csv", header, rows)
    report = check_dataset(load_dataset(demo_copy), cache_dir=cache_dir, stop_early=True)
    assert not report.audio_checked and [p.code for p in report.errors] == ["unknown-label"]
    # nothing was written: a cache folder that cannot be made does not hide the CSV's problems
    blocked = demo_copy / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    report = check_dataset(load_dataset(demo_copy), cache_dir=blocked / "cache", stop_early=True)
    assert [p.code for p in report.errors] == ["unknown-label"]


def test_training_test_duplicates_and_low_rates_are_warned(demo_copy, cache_dir):
    ds = load_dataset(demo_copy)
    test_clip, train_clip = ds.split("test")[0], ds.split("curated")[0]
    shutil.copy(train_clip.path, test_clip.path)
    y = np.random.default_rng(0).uniform(-0.3, 0.3, 8000)
    sf.write(ds.split("noisy")[0].path, y, 8000, subtype="PCM_16")
    report = check_dataset(load_dataset(demo_copy), cache_dir=cache_dir, sample_rate=16000)
    assert report.ok()  # warnings only
    codes = {p.code for p in report.warnings}
    assert {"train-test-duplicate", "low-sample-rate"} <= codes


def test_report_csv_lists_every_problem(tiny_bench, tmp_path):
    root = tmp_path / "faulty"
    shutil.copytree(tiny_bench, root)
    planted = plant_faults(root)
    report = check_dataset(load_dataset(root), cache_dir=tmp_path / "cache")
    rows = list(csv.DictReader(report.to_csv().splitlines()))
    assert {(r["code"], r["fname"]) for r in rows if r["severity"] == "error"} == planted
    assert all(r["message"] for r in rows)


def test_read_ahead_is_only_a_hint(tmp_path):
    from audiotag import fsutil

    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    fsutil.read_ahead(clip)
    assert clip.read_bytes() == b"RIFF"
    fsutil.read_ahead(tmp_path / "gone.wav")  # vanished since it was listed: the worker reports it, not this
    fsutil.read_ahead(tmp_path)  # not a regular file


def filesystem_of(path) -> str:
    """The type of the filesystem holding ``path`` (Linux), from the longest matching mount point."""
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if str(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind = point, fstype
    return kind


def evict(path) -> None:
    """Drop ``path`` from the page cache, or skip the test where that cannot be done."""
    if filesystem_of(path) in ("tmpfs", "ramfs", "overlay"):
        pytest.skip("this filesystem keeps files in memory")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages stay in memory
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_page_cache_probe_tells_cached_from_evicted_files(tmp_path):
    from audiotag import fsutil

    clip = tmp_path / "a.wav"
    clip.write_bytes(bytes(range(256)) * 64)
    assert fsutil.in_page_cache(tmp_path / "gone.wav", 0) is None
    if not hasattr(os, "RWF_NOWAIT"):
        assert fsutil.in_page_cache(clip, 100) is None
        return
    clip.read_bytes()
    found = fsutil.in_page_cache(clip, clip.stat().st_size - 1)
    if found is None:
        pytest.skip("this filesystem has no non-blocking reads")
    assert found is True
    evict(clip)
    assert fsutil.in_page_cache(clip, 0) is False
    evict(clip)  # a missed probe may start readahead of the pages after it (seen on a loaded machine)
    assert fsutil.in_page_cache(clip, clip.stat().st_size - 1) is False
    clip.read_bytes()
    assert fsutil.in_page_cache(clip, 0) is True


def test_a_file_is_read_without_waiting_only_when_all_of_it_is_in_memory(tmp_path):
    from audiotag import fsutil

    clip = tmp_path / "a.wav"
    content = bytes(range(256)) * 64
    clip.write_bytes(content)
    size = len(content)
    if not hasattr(os, "RWF_NOWAIT") or fsutil.in_page_cache(clip, 0) is None:
        assert fsutil.read_cached(clip, size) is None
        return
    assert fsutil.read_cached(clip, size) == content
    assert fsutil.read_cached(clip, size - 1) is None  # the file changed since its size was taken
    assert fsutil.read_cached(clip, size + 1) is None
    assert fsutil.read_cached(tmp_path / "gone.wav", size) is None
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert fsutil.read_cached(empty, 0) == b""
    evict(clip)
    assert fsutil.read_cached(clip, size) is None
    clip.read_bytes()
    assert fsutil.read_cached(clip, size) == content


def test_a_worker_reads_cached_files_itself_and_hands_the_rest_to_its_reader_threads(tmp_path, monkeypatch):
    from pathlib import Path

    from audiotag.audio import inventory
    from audiotag.features import cache

    paths = [tmp_path / f"{i}.wav" for i in range(5)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 100)
    not_cached = {paths[2]}
    waited = []

    def stat_and_read(path, *, wait=True):
        if not wait and path in not_cached:
            return None
        waited.append(wait)
        return inventory.stat_and_read(path, wait=wait)

    class Reader:  # the worker's thread pool, recording what it is given
        def map(self, fn, items):
            self.given = list(items)
            return map(fn, self.given)

    monkeypatch.setattr(cache, "stat_and_read", stat_and_read)
    monkeypatch.setitem(cache._WORKER, "reader", Reader())
    got = list(cache._contents(paths))
    assert [bytes(data) for _, data in got] == [bytes([i]) * 100 for i in range(5)]
    assert [stat.path for stat, _ in got] == [str(Path(p).resolve()) for p in paths]
    assert cache._WORKER["reader"].given == paths[2:]  # from the first file not in memory on
    assert waited == [False, False, True, True, True]


def test_read_ahead_hints_only_while_probed_files_are_not_cached(monkeypatch):
    from audiotag import fsutil

    cached = {0: True, 32: False, 64: None, 96: True}  # probe results at files 0, 32, 64, 96
    probed, hinted = [], []
    monkeypatch.setattr(fsutil, "in_page_cache", lambda path, offset: probed.append((path, offset)) or cached[path])
    monkeypatch.setattr(fsutil, "read_ahead", hinted.append)
    read_ahead = fsutil.ReadAhead(probe_every=32)
    for i in range(120):
        read_ahead(i, 1000)
    assert probed == [(0, 999), (32, 999), (64, 999), (96, 999)]  # the last byte of every 32nd file
    assert hinted == list(range(32, 96))  # cached: no hints; not cached or cannot tell: hints



def test_a_file_gone_since_it_was_listed_is_reported_not_raised(tmp_path):
    from audiotag.audio.inventory import scan_file

    stat, verdict = scan_file((str(tmp_path / "gone.wav"), "gone.wav"))
    assert not verdict.ok and verdict.code == "unreadable" and "No such file" in verdict.detail
    assert stat.size == -1 and "still there" in verdict.hint
