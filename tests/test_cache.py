import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from audiotag.audio.io import load_audio
from audiotag.config import Config, load_config
from audiotag.data.layouts import load_dataset
from audiotag.errors import AudiotagError, ValidationFailed
from audiotag.features import cache as cache_module
from audiotag.features.cache import FeatureStore, build_features
from audiotag.features.frontend import FrontEnd


def entries(store: FeatureStore) -> dict:
    """Each indexed entry with its pack's modification time."""
    return {digest: (e, (store.packs / e.pack).stat().st_mtime_ns) for digest, e in store.entries().items()}


def test_features_equal_the_frontend_and_are_reused(demo_data, cache_dir):
    ds = load_dataset(demo_data)
    cfg = Config()
    built = build_features(ds, cfg, cache_dir=cache_dir, progress=False)
    assert set(built.digests) == {c.key for c in ds.clips}
    frontend = FrontEnd(cfg.audio, cfg.features)
    for clip in ds.clips[::15]:
        x = built.load(clip)
        y, _ = load_audio(clip.path, sample_rate=cfg.audio.sample_rate)
        expected = frontend(torch.from_numpy(y)[None])[0].numpy()
        assert x.dtype == np.float16 and x.shape == expected.shape == (1, 64, 1 + len(y) // 320)
        np.testing.assert_allclose(x.astype(np.float32), expected, atol=0.05)  # float16 storage
    before = entries(built.store)
    assert len(before) == len(set(built.digests.values())) == len(ds.clips)
    assert len({e.pack for e, _ in before.values()}) < len(ds.clips) / 4  # a few clips per file
    again = build_features(ds, cfg, cache_dir=cache_dir, progress=False)
    assert entries(again.store) == before  # nothing recomputed or rewritten


def test_changed_settings_or_library_versions_use_new_entries(demo_data, cache_dir, monkeypatch):
    ds = load_dataset(demo_data)
    base = build_features(ds, Config(), cache_dir=cache_dir, progress=False)
    more_mels = build_features(ds, load_config(None, ["features.n_mels=32"]), cache_dir=cache_dir, progress=False)
    assert more_mels.store.dir != base.store.dir
    assert more_mels.load(ds.clips[0]).shape[1] == 32 and base.load(ds.clips[0]).shape[1] == 64
    versions = cache_module.library_versions()
    monkeypatch.setattr(cache_module, "library_versions", lambda: {**versions, "torch": "99.0"})
    assert FeatureStore(cache_dir, Config().audio, Config().features).key != base.store.key


def test_changed_audio_content_gets_a_new_entry(demo_copy, cache_dir):
    ds = load_dataset(demo_copy)
    first = build_features(ds, Config(), cache_dir=cache_dir, progress=False)
    clip = ds.split("curated")[0]
    other = ds.split("curated")[1]
    clip.path.write_bytes(other.path.read_bytes())  # same name, different sound
    second = build_features(load_dataset(demo_copy), Config(), cache_dir=cache_dir, progress=False)
    assert second.digests[clip.key] != first.digests[clip.key]
    assert second.digests[clip.key] == second.digests[other.key]  # identical content shares one entry
    np.testing.assert_array_equal(second.load(clip), first.load(other))


def test_interrupted_and_damaged_entries_are_never_trusted(demo_data, cache_dir):
    ds = load_dataset(demo_data)
    built = build_features(ds, Config(), cache_dir=cache_dir, progress=False)
    clip = ds.clips[0]
    digest = built.digests[clip.key]
    good = np.array(built.load(clip))
    entry = built.store.entry(digest)
    pack = built.store.packs / entry.pack
    pack.write_bytes(pack.read_bytes()[: entry.offset + entry.nbytes // 2])  # as if damaged on disk
    assert not FeatureStore(cache_dir, Config().audio, Config().features).has(digest)
    with pytest.raises(AudiotagError, match="missing or damaged"):
        FeatureStore(cache_dir, Config().audio, Config().features).load(digest, mmap=False)
    stale = built.store.packs / ".tmp-999-0-x.pack"  # left by a killed writer long ago
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    rebuilt = build_features(ds, Config(), cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(rebuilt.load(clip), good)
    assert rebuilt.store.entry(digest).pack != entry.pack  # rewritten elsewhere, the damaged pack not trusted
    assert not stale.exists()


def test_a_pack_written_but_never_indexed_is_ignored(demo_data, cache_dir, monkeypatch):
    """A build killed between writing a pack and indexing it leaves data nobody reads."""
    ds = load_dataset(demo_data)
    cfg = load_config(None, ["data.num_workers=1"])
    monkeypatch.setattr(FeatureStore, "_index_rows", lambda self, rows, db: rows)  # packs land, index rows do not
    with pytest.raises(AudiotagError, match="missing or damaged"):
        build_features(ds, cfg, cache_dir=cache_dir, splits=("test",), progress=False).load(ds.split("test")[0])
    monkeypatch.undo()
    store = FeatureStore(cache_dir, cfg.audio, cfg.features)
    assert store.entries() == {}
    orphans = list(store.packs.iterdir())
    assert orphans
    built = build_features(ds, cfg, cache_dir=cache_dir, splits=("test",), progress=False)
    assert len(built.store.entries()) == len(ds.split("test"))
    assert all(p.exists() for p in orphans)  # recent: perhaps a live build about to index them
    for path in orphans:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    build_features(ds, cfg, cache_dir=cache_dir, splits=("test",), progress=False)
    assert not any(p.exists() for p in orphans)  # stale and never indexed: removed
    assert all((store.packs / e.pack).exists() for e in store.entries().values())


def test_an_entry_written_twice_keeps_its_first_location(cache_dir):
    """Two builders computing one clip at once: readers of the first location must keep working."""
    cfg = Config()
    first, second = (FeatureStore(cache_dir, cfg.audio, cfg.features) for _ in range(2))
    features = np.arange(64 * 10, dtype=np.float16).reshape(1, 64, 10)
    first.write([("a" * 32, features)])
    location = first.entry("a" * 32)
    second.write([("a" * 32, features), ("b" * 32, features + 1)])
    assert FeatureStore(cache_dir, cfg.audio, cfg.features).entry("a" * 32) == location
    np.testing.assert_array_equal(second.load("b" * 32), features + 1)
    size = (second.packs / second.entry("b" * 32).pack).stat().st_size
    second.write([("b" * 32, features + 1)])  # nothing new: the bytes just appended are dropped at once
    assert len(list(second.packs.iterdir())) == 2 and (second.packs / second.entry("b" * 32).pack).stat().st_size == size
    second.write([("c" * 32, features + 2)])  # appended to the same pack, aligned
    c = second.entry("c" * 32)
    assert c.pack == second.entry("b" * 32).pack and c.offset >= size and c.offset % cache_module.ALIGN == 0
    np.testing.assert_array_equal(FeatureStore(cache_dir, cfg.audio, cfg.features).load("c" * 32), features + 2)


def test_float32_cache_is_exact(demo_data, cache_dir):
    ds = load_dataset(demo_data)
    cfg = load_config(None, ["features.cache_dtype=float32", "features.deltas=true"])
    built = build_features(ds, cfg, cache_dir=cache_dir, splits=("test",), progress=False)
    assert {c.split for c in built.dataset.clips} == {"test"}
    clip = built.dataset.clips[0]
    y, _ = load_audio(clip.path, sample_rate=16000)
    expected = FrontEnd(cfg.audio, cfg.features)(torch.from_numpy(y)[None])[0].numpy()
    np.testing.assert_array_equal(built.load(clip), expected)
    assert expected.shape[0] == 3


def test_worker_pool_and_in_process_give_identical_features(demo_data, tmp_path):
    ds = load_dataset(demo_data)
    assert len(ds.clips) >= 100  # enough for the pool to start
    pooled = build_features(ds, load_config(None, ["data.num_workers=2"]), cache_dir=tmp_path / "a", progress=False)
    serial = build_features(ds, load_config(None, ["data.num_workers=1"]), cache_dir=tmp_path / "b", progress=False)
    for clip in ds.clips:
        np.testing.assert_array_equal(pooled.load(clip), serial.load(clip))


def test_bad_clips_stop_the_build_unless_skipped(demo_copy, cache_dir):
    ds = load_dataset(demo_copy)
    bad = ds.split("noisy")[0]
    bad.path.write_bytes(b"not audio at all")
    with pytest.raises(ValidationFailed) as info:
        build_features(load_dataset(demo_copy), Config(), cache_dir=cache_dir, progress=False)
    assert bad.fname in str(info.value) and "--skip-bad" in str(info.value)
    built = build_features(load_dataset(demo_copy), Config(), cache_dir=cache_dir, skip_bad=True, progress=False)
    assert bad.key not in built.digests and [p.fname for p in built.dataset.skipped] == [bad.fname]


def test_two_processes_building_one_cache_at_once(demo_data, cache_dir):
    cmd = [sys.executable, "-m", "audiotag", "features", str(demo_data), "--cache-dir", str(cache_dir), "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ds = load_dataset(demo_data)
    built = build_features(ds, Config(), cache_dir=cache_dir, progress=False)
    assert not list(built.store.dir.glob("*/.tmp-*"))
    frontend = FrontEnd(Config().audio, Config().features)
    for clip in ds.clips[::10]:
        y, _ = load_audio(clip.path, sample_rate=16000)
        expected = frontend(torch.from_numpy(y)[None])[0].numpy().astype(np.float16)
        np.testing.assert_array_equal(built.load(clip), expected)


def test_a_cache_folder_that_cannot_be_made_is_named_with_what_to_do(demo_data, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(AudiotagError) as info:
        build_features(load_dataset(demo_data), Config(), cache_dir=tmp_path / "a-file" / "cache", progress=False)
    assert "cannot create the feature cache in" in info.value.message and "a-file" in info.value.message
    assert "--cache-dir" in info.value.hint


def test_a_pack_that_cannot_be_written_is_named_with_the_reason(cache_dir):
    cfg = Config()
    store = FeatureStore(cache_dir, cfg.audio, cfg.features)
    store.dir.mkdir(parents=True)
    store.packs.write_text("a file where the packs folder goes")
    with pytest.raises(AudiotagError, match=r"cannot write .*packs"):
        store.write([("a" * 32, np.zeros((1, 64, 10), np.float16))])
    assert store.entries() == {}  # nothing indexed


def test_features_that_come_out_non_finite_are_named_per_clip_and_never_cached(demo_data, cache_dir, monkeypatch):
    ds = load_dataset(demo_data)
    real = cache_module.compute_features

    def nan_for_odd_lengths(waveform, frontend, **kw):
        out = real(waveform, frontend, **kw)
        if len(waveform) % 2:
            out[..., :3] = np.nan
        return out

    monkeypatch.setattr(cache_module, "compute_features", nan_for_odd_lengths)
    config = load_config(None, ["data.num_workers=1"])
    with pytest.raises(ValidationFailed) as failed:
        build_features(ds, config, cache_dir=cache_dir, progress=False)
    assert "NaN or infinite" in str(failed.value.report.format())
    built = build_features(ds, config, cache_dir=cache_dir, progress=False, skip_bad=True)
    bad = {p.fname for p in built.dataset.skipped if p.code == "nonfinite-features"}
    assert bad and len(bad) < len(ds.clips)
    for clip in built.dataset.clips:
        assert np.isfinite(built.load(clip)).all()
    assert all(c.fname not in bad for c in built.dataset.clips)


def test_a_damaged_entry_is_found_by_its_checksum_recomputed_and_named(demo_data, cache_dir, capsys):
    ds = load_dataset(demo_data)
    config = load_config(None, ["data.num_workers=1"])
    built = build_features(ds, config, cache_dir=cache_dir, progress=False)
    victim = ds.clips[3]
    before = np.array(built.load(victim))
    entry = built.store.entry(built.digests[victim.key])
    with open(built.store.packs / entry.pack, "r+b") as f:  # zeros inside the pack: its size is unchanged
        f.seek(entry.offset + entry.nbytes // 3)
        f.write(b"\0" * 64)
    assert not np.array_equal(np.array(FeatureStore(cache_dir, config.audio, config.features).load(
        built.digests[victim.key])), before)
    capsys.readouterr()
    again = build_features(ds, config, cache_dir=cache_dir, progress=False)
    err = capsys.readouterr().err
    assert "1 damaged feature-cache entry" in err and f"{victim.split}/{victim.fname}" in err
    np.testing.assert_array_equal(np.array(again.load(victim)), before)
    assert again.store.entry(again.digests[victim.key]) != entry  # rewritten elsewhere
    capsys.readouterr()
    build_features(ds, config, cache_dir=cache_dir, progress=False)  # sound now: nothing to say
    assert "damaged" not in capsys.readouterr().err
