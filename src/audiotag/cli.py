"""The ``audiotag`` command: thin subcommands over the Python API.

Every subcommand parses its arguments, calls one library function and prints what it found.
Errors the user can act on are printed as ``audiotag: error: ...`` with a hint and a non-zero exit
status; anything unexpected is summarised in one line with the traceback saved to a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

from . import __version__
from .errors import AudiotagError

EXIT_PROBLEMS = 1
EXIT_INTERNAL = 3


# ----------------------------------------------------------------------------- shared options


def _add_data_args(p: argparse.ArgumentParser, *, option: bool = False) -> None:
    """DATA as a positional argument (or ``--data DIR`` with ``option``) plus the generic-CSV options."""
    what = "dataset folder (Kaggle FAT2019 layout, a folder with a labels CSV, or one folder per class)"
    if option:
        p.add_argument("--data", metavar="DIR", help=what)
    else:
        p.add_argument("data", nargs="?", metavar="DATA", help=what)
    g = p.add_argument_group("generic CSV datasets")
    g.add_argument("--csv", metavar="FILE", help="a CSV naming files and labels (instead of detecting the layout)")
    g.add_argument("--audio-dir", metavar="DIR", help="folder holding the files the CSV names (default: DATA or the CSV's folder)")
    g.add_argument("--file-col", metavar="NAME", help="column with file names (default: fname/filename/file/path/...)")
    g.add_argument("--label-col", metavar="NAME", help="column with labels (default: labels/label/category/class)")
    g.add_argument("--fold-col", metavar="NAME", help="column with predefined CV folds (default: fold, when present)")
    g.add_argument("--label-sep", default=",", metavar="SEP", help="separator between labels of one clip (default ',')")
    g.add_argument("--vocabulary", metavar="FILE", help="vocabulary.csv fixing the label set and order")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (only the keys it changes); default: built-in")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set features.n_mels=128 (repeatable)")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to compute (default: auto = a CUDA GPU "
                   "when there is one, else the CPU)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder (default: $AUDIOTAG_CACHE or ~/.cache/audiotag)")
    p.add_argument("--skip-bad", action="store_true", help="leave out clips that fail validation instead of stopping")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes for decoding/features (default: one per core)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _load(args, *, audio: bool = True):
    from .data.layouts import load_dataset

    if args.data is None and args.csv is None:
        raise AudiotagError("no dataset given", hint="pass a dataset folder, or --csv FILE --audio-dir DIR")
    return load_dataset(args.data, csv=args.csv, audio_dir=args.audio_dir, file_col=args.file_col,
                        label_col=args.label_col, fold_col=args.fold_col, label_sep=args.label_sep,
                        vocabulary=args.vocabulary, audio=audio)


def _config(args):
    from .config import load_config

    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    config = load_config(getattr(args, "config", None), overrides)
    if getattr(args, "workers", None) is not None:
        config.data.num_workers = args.workers
    if getattr(args, "skip_bad", False):
        config.data.skip_bad = True
    return config


def _print_skipped(skipped) -> None:
    """One line per file left out, with all of its problems (a file can have several)."""
    codes: dict[tuple[str, str], list[str]] = {}
    for p in skipped:
        codes.setdefault((p.split, p.fname), []).append(p.code)
    if codes:
        print(f"skipped {len(codes)} bad file{'s' if len(codes) != 1 else ''} (--skip-bad):")
        for (split, fname), found in list(codes.items())[:20]:
            print(f"  {split}/{fname}: {', '.join(dict.fromkeys(found))}")
        if len(codes) > 20:
            print(f"  ... and {len(codes) - 20} more")


# ----------------------------------------------------------------------------- subcommands


def cmd_check(args) -> int:
    from .data.check import check_dataset
    from . import fsutil

    config = _config(args)
    ds = _load(args, audio=not args.no_audio)
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


def cmd_inspect(args) -> int:
    from .report.inspect import inspect_dataset

    ds = _load(args, audio=not args.no_audio)
    summary = inspect_dataset(ds, args.out, audio=not args.no_audio, config=_config(args),
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


def cmd_features(args) -> int:
    from .features.cache import build_features

    config = _config(args)
    ds = _load(args)
    splits = tuple(s.strip() for s in args.splits.split(",")) if args.splits else None
    built = build_features(ds, config, cache_dir=args.cache_dir, splits=splits, progress=not args.quiet)
    counts = ", ".join(f"{len(built.dataset.split(s))} {s}" for s in built.dataset.splits)
    print(f"features ready for {len(built.digests)} clips ({counts}) in {built.store.dir}")
    _print_skipped(built.dataset.skipped)
    return 0


def _data_spec(args):
    from .pipeline.runs import DataSpec

    if args.data is None and args.csv is None:
        raise AudiotagError("no dataset given", hint="pass --data DIR, or --csv FILE --audio-dir DIR")
    return DataSpec(root=args.data, csv=args.csv, audio_dir=args.audio_dir, file_col=args.file_col,
                    label_col=args.label_col, fold_col=args.fold_col, label_sep=args.label_sep,
                    vocabulary=args.vocabulary)


def cmd_train(args) -> int:
    from .pipeline.train import resume, train

    if args.resume:
        resume(args.resume, progress=not args.quiet, fold=args.fold)
        return 0
    train(_data_spec(args), _config(args), out=args.out, cache_dir=args.cache_dir, progress=not args.quiet,
          fold=args.fold)
    return 0


def cmd_merge(args) -> int:
    from .pipeline.train import merge

    merge(args.run, progress=not args.quiet)
    return 0


def cmd_predict(args) -> int:
    from .pipeline.submit import predict_run

    result = predict_run(args.run, _data_spec(args), out=args.out, cache_dir=args.cache_dir, tta_views=args.tta,
                         skip_bad=args.skip_bad, progress=not args.quiet, device=args.device or "auto")
    print(f"wrote {result['out']}: {result['clips']} clips, {result['models']} fold models, "
          f"{result['tta_views']} TTA views, {result['seconds_per_clip'] * 1000:.1f} ms per clip")
    if result["filled_with_prior"]:
        print(f"{len(result['filled_with_prior'])} unusable clips got the training label frequencies instead: "
              + ", ".join(result["filled_with_prior"][:10]))
    if "lwlrap" in result:
        print(f"lwlrap against the dataset's test labels: {result['lwlrap']:.4f}")
    return 0


def cmd_score(args) -> int:
    from .pipeline.submit import score_submission

    result = score_submission(args.submission, args.truth, vocabulary=args.vocabulary)
    if args.per_class:
        print(f"{'label':40s} {'lwlrap':>8s} {'positives':>9s} {'weight':>7s}")
        for row in sorted(result["per_class"], key=lambda r: (r["lwlrap"] is None, -(r["lwlrap"] or 0))):
            value = "-" if row["lwlrap"] is None else f"{row['lwlrap']:.4f}"
            print(f"{row['label']:40s} {value:>8s} {row['positives']:9d} {row['weight']:7.4f}")
    print(f"{result['clips']} clips; lwlrap: {result['lwlrap']:.6f}")
    return 0


def cmd_runs(args) -> int:
    from .pipeline.runs import list_runs

    rows = list_runs(args.root)
    if not rows:
        print(f"no runs under {args.root}/")
        return 0
    fmt = "{run:45s} {status:8s} {model:12s} {folds:>5} {oof:>8} {test:>8} {minutes:>8}"
    print(fmt.format(run="run", status="status", model="model", folds="folds", oof="OOF", test="test", minutes="minutes"))
    for r in rows:
        print(fmt.format(run=r["run"][-45:], status=r["status"], model=r["model"], folds=str(r["folds"]),
                         oof="-" if r["oof_lwlrap"] is None else f"{r['oof_lwlrap']:.4f}",
                         test="-" if r["test_lwlrap"] is None else f"{r['test_lwlrap']:.4f}",
                         minutes="-" if r["minutes"] is None else str(r["minutes"])))
    return 0


def cmd_pipeline(args) -> int:
    from .config import load_config
    from .pipeline.recipe import bundled_recipe, load_recipe, run_pipeline, with_budget

    path = Path(args.recipe) if Path(args.recipe).is_file() or args.recipe.endswith((".yaml", ".yml")) \
        else bundled_recipe(args.recipe)
    recipe = load_recipe(path, args.overrides + ([f"train.device={args.device}"] if args.device else []))
    if args.budget_minutes is not None:
        recipe = with_budget(recipe, args.budget_minutes)
    summary = run_pipeline(recipe, _data_spec(args), out=args.out, base=load_config(args.config),
                           cache_dir=args.cache_dir, progress=not args.quiet)
    print((Path(args.out) / "pipeline.md").read_text(), end="")
    if "submission" in summary:
        print(f"submission: {summary['submission']}")
    return 0


def cmd_report(args) -> int:
    from .report.html import build_report

    page = build_report(args.target, args.out, ablations=args.ablation or [], progress=not args.quiet)
    print(f"report: {page} (one self-contained HTML file; open it in a browser)")
    return 0


def cmd_ensemble(args) -> int:
    from .pipeline.ensemble import DEFAULT_BLENDS, ensemble_runs

    blends = tuple(b.strip() for b in args.blends.split(",") if b.strip()) if args.blends else DEFAULT_BLENDS
    summary = ensemble_runs(args.runs, out=args.out, blends=blends, prune_threshold=args.prune,
                            progress=not args.quiet)
    best = summary["best_member"]
    print(f"kept {len(summary['kept'])} of {len(summary['members'])} runs: {', '.join(summary['kept'])}")
    print(f"best single run {best['model']}: OOF lwlrap {best['oof_lwlrap']:.4f}"
          + (f", test {best['test_lwlrap']:.4f}" if "test_lwlrap" in best else ""))
    for row in summary["blends"]:
        print(f"  {row['blend']:15s} nested OOF {row['nested_oof_lwlrap']:.4f}"
              + (f"  test {row['test_lwlrap']:.4f}" if "test_lwlrap" in row else "")
              + (f"  {row['weights']}" if row["weights"] else ""))
    print(f"chosen: {summary['chosen']}; wrote {summary['submission']} and the report {Path(args.out) / 'blends.md'}")
    return 0


def cmd_ablate(args) -> int:
    from .pipeline.ablation import DEFAULT_REPRESENTATIONS, DEFAULT_STRATEGIES, ablate

    chosen = args.strategies or args.variants
    if chosen in ("noisy", "representations"):
        strategies = DEFAULT_STRATEGIES if chosen == "noisy" else DEFAULT_REPRESENTATIONS
    elif chosen:
        strategies = tuple(x.strip() for x in chosen.split(",") if x.strip())
    else:
        strategies = DEFAULT_STRATEGIES
    seeds = tuple(int(x) for x in args.seeds.split(","))
    summary = ablate(_data_spec(args), _config(args), out=args.out, strategies=strategies, seeds=seeds,
                     cache_dir=args.cache_dir, progress=not args.quiet)
    print((Path(args.out) / "ablation.md").read_text(), end="")
    print(f"table: {Path(args.out) / 'ablation.csv'}; {len(summary['runs'])} run folders under {args.out}")
    return 0


def cmd_audit(args) -> int:
    from .pipeline.audit import audit_run

    data = _data_spec(args) if (args.data or args.csv) else None
    summary = audit_run(args.run, data=data, out=args.out, cache_dir=args.cache_dir, progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.run) / "audit"
    print(f"{summary['noisy_clips']} noisy clips: estimated {summary['estimated_wrong_given_labels']:.1%} of given "
          f"labels wrong, {summary['estimated_missing_true_labels']:.1%} of true labels missing")
    if summary["models_saw_noisy_clips"]:
        print("warning: this run trained on noisy clips; audit with a curated-only run for a fair estimate")
    print(f"report: {out / 'audit.md'}; every clip, most suspicious first: {out / 'audit_clips.csv'}")
    return 0


def cmd_tag(args) -> int:
    from .pipeline.submit import tag_files

    items = tag_files(args.run, args.files, top=args.top, device=args.device or "auto")
    for item in items:
        if "error" in item:
            print(f"{item['file']}: {item['error']}" + (f"\n  hint: {item['hint']}" if item["hint"] else ""),
                  file=sys.stderr)
            continue
        print(item["file"])
        for label, p in item["tags"]:
            print(f"  {p:6.3f}  {label}")
    failed = sum("error" in item for item in items)
    if failed:
        print(f"{failed} of {len(items)} files could not be tagged", file=sys.stderr)
    return 1 if failed else 0


def cmd_config(args) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def cmd_demo(args) -> int:
    from .pipeline.demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_channels, bench_features, bench_training

    if args.what == "channels":
        r = bench_channels(args.data, config=_config(args), limit=args.limit or 200, report=args.report,
                           progress=not args.quiet)
        for name, row in r["channels"].items():
            lib = "" if row["librosa_ms"] is None else f"; librosa {row['librosa_ms']:.2f} ms ({row['librosa']})"
            print(f"{name}: audiotag {row['ours_ms']:.2f} ms/clip{lib}")
        return 0
    if args.what == "training":
        r = bench_training(args.data, config=_config(args), cache_dir=args.cache_dir, report=args.report,
                           progress=not args.quiet)
        print(f"{r['model']} ({r['precision']}): training {r['train_clips_per_s']:.0f} clips/s; inference "
              f"{r['inference_clips_per_s']:.0f} clips/s, {r['tta_clips_per_s']:.0f} with {r['tta_views']} TTA views")
        return 0

    result = bench_features(args.data, config=_config(args), limit=args.limit, report=args.report,
                            progress=not args.quiet)
    r = result
    print(f"{r['clips']} clips: audiotag cache build {r['ours_end_to_end_clips_per_s']:.0f} clips/s; librosa "
          f"melspectrogram {r['librosa_compute_clips_per_s']:.0f} clips/s ({r['build_vs_librosa_compute_ratio']:.1f}x), "
          f"with decoding {r['librosa_end_to_end_clips_per_s']:.0f} clips/s ({r['end_to_end_ratio']:.1f}x); front-end "
          f"alone {r['compute_ratio']:.1f}x; max |dB diff| {r['max_abs_db_difference']:.4f}")
    if args.report:
        print(f"written to {args.report}")
    return 0


# ----------------------------------------------------------------------------- parser


def _sub(subs, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=description,
                           epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag",
        description="Multi-label audio tagging, FAT2019 style: validate data, cache features, train, predict, score.",
        epilog="example:\n  audiotag demo            # generate a synthetic dataset and run the whole pipeline on it\n"
               "  audiotag check DATA --skip-bad\n\nEach subcommand has its own --help with an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"audiotag {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True

    p = _sub(subs, "demo", "generate the built-in synthetic dataset and run the pipeline on it",
             "Generate a synthetic FAT2019-layout dataset (14 sound classes, curated/noisy/test splits) "
             "and run check -> inspect -> the demo pipeline recipe (a log-mel CNN and a log-mel+CQT CNN, each with "
             "K-fold CV, blended by nested CV) -> score -> HTML report on it. Needs no download; a few minutes on a "
             "2-core CPU.",
             "audiotag demo --out demo")
    p.add_argument("--out", default="demo", metavar="DIR", help="folder for the data, cache and outputs (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated dataset (default 0)")
    p.add_argument("--overwrite", action="store_true", help="regenerate the data even if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = _sub(subs, "check", "validate a dataset and list every problem",
             "Validate a dataset before any heavy work: CSV rows, labels, paths, missing and stray files, "
             "and every audio file (decoded once; verdicts are cached). Exit status 1 when anything is wrong.",
             """
             audiotag check data/fat2019 --report problems.csv
             audiotag check --csv ESC-50/meta/esc50.csv --audio-dir ESC-50/audio
             audiotag check data/fat2019 --skip-bad   # exit 0 if the bad clips can simply be left out
             """)
    _add_data_args(p)
    _add_config_args(p)
    _add_run_args(p)
    p.add_argument("--no-audio", action="store_true", help="check the CSVs only (no audio folders needed)")
    p.add_argument("--report", metavar="FILE", help="also write every problem to this CSV")
    p.set_defaults(func=cmd_check)

    p = _sub(subs, "inspect", "summarise a dataset with plots (know your data)",
             "Write summary.md, summary.json and PNG plots: clip counts, label distribution per split, labels per "
             "clip, class imbalance, curated-vs-noisy label shift, durations and example spectrograms.",
             "audiotag inspect data/fat2019 --out inspect/\naudiotag inspect FSDKaggle2019.meta --no-audio --out meta-summary/")
    _add_data_args(p)
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the summary and plots")
    p.add_argument("--no-audio", action="store_true", help="summarise from the CSVs alone")
    p.add_argument("--max-examples", type=int, default=24, metavar="N", help="classes shown as example spectrograms")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_inspect)

    p = _sub(subs, "features", "validate a dataset and build its feature cache",
             "Validate a dataset and compute the configured features of every clip into the cache (once per "
             "settings, audio content and library versions; later runs reuse it).",
             "audiotag features data/fat2019 --set features.n_mels=128 --skip-bad")
    _add_data_args(p)
    _add_config_args(p)
    _add_run_args(p)
    p.add_argument("--splits", metavar="LIST", help="only these splits, e.g. curated,test (default: all)")
    p.set_defaults(func=cmd_features)

    p = _sub(subs, "train", "train CNNs with K-fold CV and predict the test set",
             "Validate the data, cache features, split multilabel-stratified folds (or use the dataset's own), "
             "train one model per fold with mixup and SpecAugment, and write a run folder: resolved config, "
             "folds, logs, checkpoints, out-of-fold and test predictions, scores.json and training curves. "
             "An interrupted run continues with --resume.",
             """
             audiotag train --data data/fat2019 --out runs/baseline
             audiotag train --data data/fat2019 --config my.yaml --set model.width=48 --set train.epochs=60
             audiotag train --resume runs/baseline
             audiotag train --data data/fat2019 --out runs/big --fold 3     # one job per fold, then:
             audiotag merge runs/big
             torchrun --standalone --nproc_per_node 4 -m audiotag train --data data/fat2019 --out runs/ddp
             """)
    _add_data_args(p, option=True)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (uses its saved config and data)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<date-time>-<model>)")
    p.add_argument("--fold", type=int, metavar="K", help="train only fold K, as one of several jobs sharing --out "
                   "(the last one to finish assembles the run; `audiotag merge` does it by hand)")
    _add_device_arg(p)
    _add_config_args(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = _sub(subs, "merge", "assemble a run whose folds were trained by separate jobs",
             "Check that every fold of RUN_DIR is done (trained by `audiotag train --fold K` jobs), then write the "
             "out-of-fold and fold-averaged test predictions, scores.json and training curves exactly as a "
             "serial run would.",
             """
             for k in 0 1 2 3 4; do audiotag train --data data/fat2019 --out runs/big --fold $k & done; wait
             audiotag merge runs/big
             """)
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_merge)

    p = _sub(subs, "predict", "write a Kaggle submission for a test set with a trained run",
             "Predict every test clip of DIR (test/ + sample_submission.csv is enough) with the run's fold models, "
             "sliding windows and TTA, and write fname + one column per label in vocabulary order.",
             "audiotag predict runs/baseline --data data/fat2019 --out submission.csv --tta 4")
    p.add_argument("run", metavar="RUN_DIR")
    _add_data_args(p, option=True)
    p.add_argument("--out", required=True, metavar="FILE", help="submission CSV to write")
    p.add_argument("--tta", type=int, metavar="N", help="TTA views (default: the run's predict.tta_views)")
    _add_device_arg(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_predict)

    p = _sub(subs, "score", "lwlrap of a submission against ground truth",
             "Validate a submission as Kaggle did (header, one row per test clip, finite numbers) and print its "
             "lwlrap; --per-class adds each label's lwlrap, positives and weight.",
             "audiotag score submission.csv --truth data/fat2019/test_labels.csv --per-class")
    p.add_argument("submission", metavar="SUBMISSION")
    p.add_argument("--truth", required=True, metavar="LABELS_CSV", help="fname,labels ground truth")
    p.add_argument("--vocabulary", metavar="FILE", help="label order (default: vocabulary.csv next to the truth)")
    p.add_argument("--per-class", action="store_true")
    p.set_defaults(func=cmd_score)

    p = _sub(subs, "runs", "list training runs with their CV and test scores",
             "One line per run folder: status, model, folds, pooled out-of-fold lwlrap, test lwlrap, minutes.",
             "audiotag runs\naudiotag runs experiments/")
    p.add_argument("root", nargs="?", default="runs", metavar="DIR", help="folder holding run folders (default: runs)")
    p.set_defaults(func=cmd_runs)

    p = _sub(subs, "ensemble", "blend several finished runs: correlation, pruning, weighted blends, stacking",
             "Align the runs' out-of-fold and test predictions by fname (runs must share clips, folds and labels), "
             "report their Pearson correlation, drop members too correlated with a better one, and score every "
             "blend by nested cross-validation on the runs' folds. The blend with the best nested OOF lwlrap "
             "writes OUT/submission.csv; OUT/blends.md is the report.",
             "audiotag ensemble runs/vgg runs/resnet runs/vgg-seed1 --out runs/ensemble\n"
             "audiotag ensemble runs/* --out ens --blends mean,caruana,stack_logistic --prune 0.95")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report and submission")
    p.add_argument("--blends", metavar="LIST",
                   help="comma-separated blends (default: all of mean, geometric, rank, weighted, caruana, "
                        "stack_logistic, stack_mlp)")
    p.add_argument("--prune", type=float, default=0.97, metavar="R",
                   help="drop a run whose Pearson r with a better kept run exceeds R (default 0.97; 1 keeps all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ensemble)

    p = _sub(subs, "pipeline", "run a recipe of stages (baseline, noisy set, other inputs, blend) to a submission",
             "RECIPE is a YAML file or a bundled recipe: demo (the demo data, minutes), cpu-small (a --scale small "
             "benchmark on a 2-core CPU), gpu-full (FSDKaggle2019 on a GPU). Every stage is a run folder under OUT; "
             "OUT/pipeline.json records what each stage was made from, so running the same command again skips "
             "finished stages, resumes an interrupted one and redoes only stages whose settings or inputs changed. "
             "Ends with OUT/submission.csv and OUT/pipeline.md (CV and test lwlrap, minutes and inference time per "
             "stage). --set applies to every stage, over the recipe. --budget-minutes caps the inference time "
             "of every ensemble stage (estimated for FAT2019's 3,361 test clips from this machine's measurement): "
             "TTA views and members are cut, least lwlrap lost first, and each cut is reported.",
             "audiotag pipeline demo --data demo/data --out runs/pipeline-demo\n"
             "audiotag pipeline demo --data demo/data --out runs/pipeline-demo --budget-minutes 2\n"
             "audiotag pipeline cpu-small --data .bench/small --out runs/pipeline --cache-dir .bench/cache\n"
             "audiotag pipeline my-recipe.yaml --data data/fat2019 --out runs/p --set train.epochs=5")
    p.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file, or demo | cpu-small | gpu-full")
    _add_data_args(p, option=True)
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the stages, report and submission")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="inference budget of the ensemble stages: minutes for 3,361 test clips (over the recipe's)")
    _add_device_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pipeline)

    p = _sub(subs, "report", "one self-contained HTML page about a run or a pipeline",
             "Data summary, every stage's CV and test lwlrap, time and inference cost, ablation tables (--ablation), "
             "per-class lwlrap of the final predictions, the ensemble's correlation heatmap, training curves and "
             "example spectrograms with predicted vs true tags, in OUT/index.html with the images embedded.",
             "audiotag report runs/pipeline --out runs/pipeline/report\n"
             "audiotag report runs/baseline --out report --ablation runs/ablation")
    p.add_argument("target", metavar="RUN_OR_PIPELINE", help="a run folder or a pipeline folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.html")
    p.add_argument("--ablation", action="append", metavar="DIR", help="an `audiotag ablate` folder to include "
                                                                       "(repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = _sub(subs, "ablate", "compare noisy-set strategies, inputs or model families on the same folds and seeds",
             "Train each variant for each seed as a normal run folder under OUT, then write ablation.md/.csv: OOF "
             "lwlrap on curated clips, test lwlrap when the data has test labels, a paired bootstrap interval of each "
             "variant's gain over the baseline (curated when listed, else the first), the Pearson correlation of its "
             "OOF predictions with the baseline's, minutes per run. Noisy-set strategies: curated, joint, joint_smooth, "
             "joint_bootstrap, joint_lq, joint_drop, pretrain, pseudo_agree, pseudo_relabel, pseudo_soft, mixmatch. "
             "Inputs and models: logmel, logmel_deltas, mfcc, cqt, logmel_phase, logmel_chroma, logmel_freqpos, "
             "logmel_denoised, pcen, wavecnn, crnn, rnn, attention, resnet. Re-running continues where it stopped.",
             "audiotag ablate --data .bench/small --out runs/ablation --seeds 0,1 --set train.epochs=40\n"
             "audiotag ablate --data .bench/small --out runs/inputs --variants representations --seeds 0\n"
             "audiotag ablate --data data/fat2019 --out runs/abl --strategies curated,pretrain,pseudo_agree")
    _add_data_args(p, option=True)
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the runs and the table")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--strategies", metavar="LIST", help="comma-separated variants, or 'noisy' (the default: "
                                                              "curated,joint,joint_lq,pretrain,pseudo_agree,mixmatch)")
    choice.add_argument("--variants", metavar="LIST", help="same as --strategies; 'representations' = logmel,"
                                                            "logmel_deltas,mfcc,cqt,logmel_phase,wavecnn,crnn")
    p.add_argument("--seeds", default="0,1", metavar="LIST", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ablate)

    p = _sub(subs, "audit", "estimate how noisy the noisy set's labels are, per class and per clip",
             "Predict every noisy clip with the run's fold models (train the run on curated clips only, so "
             "they never heard these clips), calibrate on its out-of-fold curated predictions, and estimate the "
             "share of wrong given labels and of missing true labels, per class and overall. Lists the clips "
             "most likely mislabelled. Writes audit.md, audit_clips.csv, audit_classes.csv and audit.png.",
             "audiotag train --data data/fat2019 --out runs/curated\n"
             "audiotag audit runs/curated            # report in runs/curated/audit/")
    p.add_argument("run", metavar="RUN_DIR")
    _add_data_args(p, option=True)
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN_DIR/audit)")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder (default: the run's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_audit)

    p = _sub(subs, "tag", "print the top tags of audio files",
             "Decode each file, compute its features and print the labels the run's fold models rate highest. "
             "A folder stands for the audio files under it. Files that cannot be decoded are reported and "
             "skipped; the exit status is then 1.",
             "audiotag tag --run runs/baseline dog_bark.wav street.flac recordings/ --top 3")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--top", type=int, default=5, metavar="N")
    _add_device_arg(p)
    p.set_defaults(func=cmd_tag)

    p = _sub(subs, "config", "print the resolved configuration",
             "Print the configuration that a command would use: the defaults, then --config, then each --set. "
             "Unknown keys, wrong types and out-of-range values are reported.",
             "audiotag config --config experiments/mels128.yaml --set features.deltas=true")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = _sub(subs, "bench", "benchmark feature extraction against librosa",
             "features: build the feature cache of DATA from cold and time librosa per clip on the same files and "
             "settings. training: training and inference throughput (with and without TTA) of the configured model. "
             "channels: per-clip cost of each extra channel (MFCC, chroma, CQT, phase, deltas) against librosa. "
             "--report writes the table into a Markdown file (BENCHMARKS.md).",
             "python ../shared/bench/make_dataset.py --out .bench/small --scale small\n"
             "audiotag bench features .bench/small --report BENCHMARKS.md\n"
             "audiotag bench training .bench/small --report BENCHMARKS.md\n"
             "audiotag bench channels .bench/small --limit 200 --report BENCHMARKS.md")
    p.add_argument("what", choices=["features", "training", "channels"], help="what to benchmark")
    p.add_argument("data", metavar="DATA", help="dataset folder")
    _add_config_args(p)
    p.add_argument("--limit", type=int, metavar="N", help="only the first N clips")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache folder (training benchmark)")
    p.add_argument("--report", metavar="FILE", help="Markdown file to write the results into")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AudiotagError as e:
        print(f"audiotag: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("audiotag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, traceback to a file
        fd, path = tempfile.mkstemp(prefix="audiotag-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        print(f"audiotag: internal error: {type(e).__name__}: {e}\n  the full traceback is in {path}; "
              "please report it with the command you ran", file=sys.stderr)
        return EXIT_INTERNAL


def entry_point() -> None:
    """Console script. On Linux it re-executes itself once with glibc's allocator told to keep freed
    memory: otherwise every training step re-faults its buffers (measured in BENCHMARKS.md)."""
    if (sys.platform.startswith("linux") and "MALLOC_MMAP_MAX_" not in os.environ
            and not os.environ.get("AUDIOTAG_NO_REEXEC")):
        env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
        try:
            os.execve(sys.executable, [sys.executable, "-m", "audiotag", *sys.argv[1:]], env)
        except OSError:
            pass
    sys.exit(main())
