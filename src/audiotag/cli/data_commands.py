"""Subcommands about a dataset and settings: demo, check, inspect, features, config, bench."""

from __future__ import annotations

from pathlib import Path

from .. import fsutil
from ..bench import bench_channels, bench_features, bench_training
from ..data.check import check_dataset
from ..errors import AudiotagError
from ..features.cache import build_features
from ..recipes.demo import run_demo
from ..report.inspect import inspect_dataset
from .options import Shared, add_data_positional, add_subcommand, config_of, load, print_skipped

EXIT_PROBLEMS = 1


def cmd_demo(args) -> int:
    if args.seed < 0:
        raise AudiotagError(f"--seed {args.seed}: the demo data's seed is 0 or more", hint="e.g. --seed 1")
    fsutil.check_writable(args.out, folder=True)
    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def add_demo(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "demo", "generate the built-in synthetic dataset and run the pipeline on it",
        "Generate a synthetic FAT2019-layout dataset (14 sound classes, curated/noisy/test splits) "
        "and run check -> inspect -> the demo pipeline recipe (a log-mel CNN and a log-mel+CQT CNN, each with "
        "K-fold CV, blended by nested CV) -> score -> HTML report on it. Needs no download; a few minutes on a "
        "2-core CPU.",
        "audiotag demo --out demo",
        parents=[shared.quiet])
    p.add_argument("--out", default="demo", metavar="DIR", help="folder for the data, cache and outputs (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated dataset (default 0)")
    p.add_argument("--overwrite", action="store_true", help="regenerate the data even if it exists")
    p.set_defaults(func=cmd_demo)


def cmd_check(args) -> int:
    if args.report:
        fsutil.check_writable(args.report, option="--report")
    config = config_of(args)
    ds = load(args, audio=not args.no_audio)
    report = check_dataset(ds, audio=not args.no_audio, cache_dir=args.cache_dir, num_workers=config.data.num_workers,
                           progress=not args.quiet, sample_rate=config.audio.sample_rate)
    text = report.format()
    if text:
        print(text)
    if args.report:
        fsutil.write_text(args.report, report.to_csv())
        print(f"problems written to {args.report}")
    print(report.summary())
    if report.ok():
        return 0
    if report.ok(skip_bad=args.skip_bad):
        n = len(report.bad_clips)
        print(f"--skip-bad: later stages will proceed without the {n} bad file{'s' if n != 1 else ''}")
        return 0
    return EXIT_PROBLEMS


def add_check(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "check", "validate a dataset and list every problem",
        "Validate a dataset before any heavy work: CSV rows, labels, paths, missing and stray files, "
        "and every audio file (decoded once; verdicts are cached). Exit status 1 when anything is wrong.",
        """
        audiotag check --data data/fat2019 --report problems.csv
        audiotag check --csv ESC-50/meta/esc50.csv --audio-dir ESC-50/audio
        audiotag check --csv fold1.csv --audio-dir ESC-50/audio --only-listed   # the CSV is a selection
        audiotag check --data data/fat2019 --skip-bad   # exit 0 if the bad clips can simply be left out
        """,
        parents=[shared.data, shared.config, shared.cache, shared.workers, shared.skip_bad, shared.quiet])
    add_data_positional(p)
    p.add_argument("--no-audio", action="store_true", help="check the CSVs only (no audio folders needed)")
    p.add_argument("--report", metavar="FILE", help="also write every problem to this CSV")
    p.set_defaults(func=cmd_check)


def cmd_inspect(args) -> int:
    if args.max_examples < 0:
        raise AudiotagError(f"--max-examples {args.max_examples}: a number of classes, 0 or more",
                            hint="0 leaves the example spectrograms out")
    fsutil.check_writable(args.out, folder=True)
    ds = load(args, audio=not args.no_audio)
    summary = inspect_dataset(ds, args.out, audio=not args.no_audio, config=config_of(args),
                              max_example_classes=args.max_examples, progress=not args.quiet)
    parts = [f"{s['clips']} {name}" for name, s in summary["splits"].items()]
    print(f"{summary['layout']} dataset: {', '.join(parts)} clips; {summary['vocabulary_size']} labels")
    for name, s in summary["splits"].items():
        if s["multi_label_clips"]:
            print(f"  {name}: {s['multi_label_clips']} multi-label clips, "
                  f"{s['mean_labels_per_clip']:.2f} labels per clip on average")
    if "shift_curated_to_noisy" in summary:
        print(f"  curated -> noisy label shift: JS divergence {summary['shift_curated_to_noisy']['js_divergence_bits']:.3f} bits")
    print(f"summary: {Path(args.out) / 'summary.md'}")
    return 0


def add_inspect(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "inspect", "summarise a dataset with plots (know your data)",
        "Write summary.md, summary.json and PNG plots: clip counts, label distribution per split, labels per "
        "clip, class imbalance, curated-vs-noisy label shift, durations and example spectrograms.",
        "audiotag inspect --data data/fat2019 --out inspect/\naudiotag inspect --data FSDKaggle2019.meta --no-audio --out meta-summary/",
        parents=[shared.data, shared.config, shared.quiet])
    add_data_positional(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the summary and plots")
    p.add_argument("--no-audio", action="store_true", help="summarise from the CSVs alone")
    p.add_argument("--max-examples", type=int, default=24, metavar="N", help="classes shown as example spectrograms")
    p.set_defaults(func=cmd_inspect)


def cmd_features(args) -> int:
    config = config_of(args)
    ds = load(args)
    splits = tuple(s.strip() for s in args.splits.split(",")) if args.splits else None
    built = build_features(ds, config, cache_dir=args.cache_dir, splits=splits, progress=not args.quiet)
    counts = ", ".join(f"{len(built.dataset.split(s))} {s}" for s in built.dataset.splits)
    print(f"features ready for {len(built.digests)} clips ({counts}) in {built.store.dir}")
    print_skipped(built.dataset.skipped)
    return 0


def add_features(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "features", "validate a dataset and build its feature cache",
        "Validate a dataset and compute the configured features of every clip into the cache (once per "
        "settings, audio content and library versions; later runs reuse it).",
        "audiotag features --data data/fat2019 --set features.n_mels=128 --skip-bad",
        parents=[shared.data, shared.config, shared.cache, shared.workers, shared.skip_bad, shared.quiet])
    add_data_positional(p)
    p.add_argument("--splits", metavar="LIST", help="only these splits, e.g. curated,test (default: all)")
    p.set_defaults(func=cmd_features)


def cmd_config(args) -> int:
    print(config_of(args).to_yaml(), end="")
    return 0


def add_config(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "config", "print the resolved configuration",
        "Print the configuration that a command would use: the defaults, then --config, then each --set. "
        "Unknown keys, wrong types and out-of-range values are reported.",
        "audiotag config --config experiments/mels128.yaml --set features.deltas=true",
        parents=[shared.config, shared.device])
    p.set_defaults(func=cmd_config)


def cmd_bench(args) -> int:
    if args.csv:
        raise AudiotagError(f"--csv {args.csv}: audiotag bench reads a dataset folder",
                            hint="pass --data DIR (a folder in the Kaggle layout, a labels CSV with its audio, "
                                 "or one sub-folder per class)")
    if args.data is None:
        raise AudiotagError("no dataset given", hint="pass --data DIR")
    if args.limit is not None and args.limit < 1:
        raise AudiotagError(f"--limit {args.limit}: the number of clips to time is 1 or more", hint="e.g. --limit 200")
    if args.what == "channels":
        r = bench_channels(args.data, config=config_of(args), limit=args.limit or 200, report=args.report,
                           progress=not args.quiet)
        for name, row in r["channels"].items():
            lib = "" if row["librosa_ms"] is None else f"; librosa {row['librosa_ms']:.2f} ms ({row['librosa']})"
            print(f"{name}: audiotag {row['ours_ms']:.2f} ms/clip{lib}")
        return 0
    if args.what == "training":
        r = bench_training(args.data, config=config_of(args), cache_dir=args.cache_dir, report=args.report,
                           progress=not args.quiet)
        print(f"{r['model']} ({r['precision']}): training {r['train_clips_per_s']:.0f} clips/s; inference "
              f"{r['inference_clips_per_s']:.0f} clips/s, {r['tta_clips_per_s']:.0f} with {r['tta_views']} TTA views")
        return 0

    result = bench_features(args.data, config=config_of(args), limit=args.limit, report=args.report,
                            progress=not args.quiet)
    r = result
    print(f"{r['clips']} clips: audiotag cache build {r['ours_end_to_end_clips_per_s']:.0f} clips/s; librosa "
          f"melspectrogram {r['librosa_compute_clips_per_s']:.0f} clips/s ({r['build_vs_librosa_compute_ratio']:.1f}x), "
          f"with decoding {r['librosa_end_to_end_clips_per_s']:.0f} clips/s ({r['end_to_end_ratio']:.1f}x); front-end "
          f"alone {r['compute_ratio']:.1f}x; max |dB diff| {r['max_abs_db_difference']:.4f}")
    if args.report:
        print(f"written to {args.report}")
    return 0


def add_bench(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "bench", "benchmark feature extraction against librosa",
        "features: build the feature cache of DATA from cold and time librosa per clip on the same files and "
        "settings. training: training and inference throughput (with and without TTA) of the configured model. "
        "channels: per-clip cost of each extra channel (MFCC, chroma, CQT, phase, deltas) against librosa. "
        "--report writes the table into a Markdown file (BENCHMARKS.md).",
        "python ../shared/bench/make_dataset.py --out .bench/small --scale small\n"
        "audiotag bench features --data .bench/small --report BENCHMARKS.md\n"
        "audiotag bench training --data .bench/small --report BENCHMARKS.md\n"
        "audiotag bench channels --data .bench/small --limit 200 --report BENCHMARKS.md",
        parents=[shared.data, shared.config, shared.cache, shared.workers, shared.quiet])
    p.add_argument("what", choices=["features", "training", "channels"], help="what to benchmark")
    add_data_positional(p)
    p.add_argument("--limit", type=int, metavar="N", help="only the first N clips")
    p.add_argument("--report", metavar="FILE", help="Markdown file to write the results into")
    p.set_defaults(func=cmd_bench)
