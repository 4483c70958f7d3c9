"""Subcommands that train a run and use it: train, merge, predict, score, runs, tag, audit."""

from __future__ import annotations

import sys
from pathlib import Path

from ..inference.score import score_submission
from .. import fsutil
from ..export import export
from ..predictor import check_timeline_options, load_predictor, predict_submission, tag_files
from ..runs import list_runs
from ..training.audit import audit_run
from ..training.train import merge, resume, train
from .options import Shared, add_subcommand, config_of, data_spec


def cmd_train(args) -> int:
    if args.resume:
        resume(args.resume, progress=not args.quiet, fold=args.fold)
        return 0
    train(data_spec(args), config_of(args), out=args.out, cache_dir=args.cache_dir, progress=not args.quiet,
          fold=args.fold)
    return 0


def add_train(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "train", "train CNNs with K-fold CV and predict the test set",
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
        """,
        parents=[shared.data, shared.config, shared.device, shared.cache, shared.workers, shared.skip_bad, shared.quiet])
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (uses its saved config and data)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<date-time>-<model>)")
    p.add_argument("--fold", type=int, metavar="K", help="train only fold K, as one of several jobs sharing --out "
                   "(the last one to finish assembles the run; `audiotag merge` does it by hand)")
    p.set_defaults(func=cmd_train)


def cmd_merge(args) -> int:
    merge(args.run, progress=not args.quiet)
    return 0


def add_merge(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "merge", "assemble a run whose folds were trained by separate jobs",
        "Check that every fold of RUN_DIR is done (trained by `audiotag train --fold K` jobs), then write the "
        "out-of-fold and fold-averaged test predictions, scores.json and training curves exactly as a "
        "serial run would.",
        """
        for k in 0 1 2 3 4; do audiotag train --data data/fat2019 --out runs/big --fold $k & done; wait
        audiotag merge runs/big
        """,
        parents=[shared.quiet])
    p.add_argument("run", metavar="RUN_DIR")
    p.set_defaults(func=cmd_merge)


def cmd_predict(args) -> int:
    result = predict_submission(args.run, data_spec(args), out=args.out, cache_dir=args.cache_dir, tta_views=args.tta,
                                skip_bad=args.skip_bad, progress=not args.quiet, device=args.device or "auto",
                                allow_missing_folds=args.allow_missing_folds, standardize=args.standardize)
    views = f", {result['tta_views']} TTA views" if result["tta_views"] is not None else ""
    print(f"wrote {result['out']}: {result['clips']} clips with the {result['kind']} ({result['models']} fold "
          f"models{views}), {result['seconds_per_clip'] * 1000:.1f} ms per clip")
    if result["filled_with_prior"]:
        print(f"{len(result['filled_with_prior'])} unusable clips got the training label frequencies instead: "
              + ", ".join(result["filled_with_prior"][:10]))
    print("each label's scores standardised over the test set (--standardize)" if result["standardized"] else
          "scores are the models' probabilities (not standardised per label: --standardize)")
    if "lwlrap" in result:
        raw = f" ({result['lwlrap_probabilities']:.4f} before standardising)" if result["standardized"] else ""
        print(f"lwlrap against the dataset's test labels: {result['lwlrap']:.4f}{raw}")
    return 0


def add_predict(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "predict", "write a Kaggle submission for a test set with a run, an ensemble or a pipeline",
        "Predict every test clip of DIR (test/ + sample_submission.csv is enough) and write fname + one column "
        "per label in vocabulary order, each label's scores standardised over the test set (--standardize). "
        "FOLDER is a run (its fold models, sliding windows and TTA), an ensemble "
        "folder (every member its blend weighs, each with its own features, windows and TTA, blended as fitted) "
        "or a pipeline folder (its final stage). On the pipeline's own test set this writes its submission.csv "
        "again.",
        """
        audiotag predict runs/baseline --data data/fat2019 --out submission.csv --tta 4
        audiotag predict runs/pipeline --data data/new_test_set --out submission.csv   # the final blend
        audiotag predict runs/baseline --data data/fat2019 --out partial.csv --allow-missing-folds
        """,
        parents=[shared.data, shared.device, shared.cache, shared.skip_bad, shared.standardize, shared.quiet])
    p.add_argument("run", metavar="FOLDER", help="a run, ensemble or pipeline folder")
    p.add_argument("--out", required=True, metavar="FILE", help="submission CSV to write")
    p.add_argument("--tta", type=int, metavar="N", help="TTA views of a run (default: the run's predict.tta_views)")
    p.add_argument("--allow-missing-folds", action="store_true",
                   help="predict with the fold models present when some are missing (default: an error)")
    p.set_defaults(func=cmd_predict)


def cmd_score(args) -> int:
    result = score_submission(args.submission, args.truth, vocabulary=args.vocabulary)
    if args.per_class:
        print(f"{'label':40s} {'lwlrap':>8s} {'positives':>9s} {'weight':>7s}")
        for row in sorted(result["per_class"], key=lambda r: (r["lwlrap"] is None, -(r["lwlrap"] or 0))):
            value = "-" if row["lwlrap"] is None else f"{row['lwlrap']:.4f}"
            print(f"{row['label']:40s} {value:>8s} {row['positives']:9d} {row['weight']:7.4f}")
    if len(result["by_label_count"]) > 1:
        print("by labels per clip: " + "; ".join(f"{row['labels']}: {row['lwlrap']:.4f} ({row['clips']} clips)"
                                                  for row in result["by_label_count"]))
    print(f"{result['clips']} clips; lwlrap: {result['lwlrap']:.6f}")
    return 0


def add_score(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "score", "lwlrap of a submission against ground truth",
        "Validate a submission as Kaggle did (header, one row per test clip, finite numbers) and print its "
        "lwlrap, and its lwlrap on the clips with 1, 2, 3, ... labels when they differ; --per-class adds each "
        "label's lwlrap, positives and weight.",
        "audiotag score submission.csv --truth data/fat2019/test_labels.csv --per-class")
    p.add_argument("submission", metavar="SUBMISSION")
    p.add_argument("--truth", required=True, metavar="LABELS_CSV", help="fname,labels ground truth")
    p.add_argument("--vocabulary", metavar="FILE", help="label order (default: vocabulary.csv next to the truth)")
    p.add_argument("--per-class", action="store_true")
    p.set_defaults(func=cmd_score)


def cmd_runs(args) -> int:
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
        if r.get("problem"):
            print(f"  {r['problem']}")
    return 0


def add_runs(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "runs", "list training runs with their CV and test scores",
        "One line per run folder: status, model, folds, pooled out-of-fold lwlrap, test lwlrap, minutes.",
        "audiotag runs\naudiotag runs experiments/")
    p.add_argument("root", nargs="?", default="runs", metavar="DIR", help="folder holding run folders (default: runs)")
    p.set_defaults(func=cmd_runs)


def cmd_tag(args) -> int:
    if args.timeline:
        return _timelines(args)
    items = tag_files(args.run, args.files, top=args.top, device=args.device or "auto",
                      allow_missing_folds=args.allow_missing_folds)
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


def _timelines(args) -> int:
    # the options first: a bad one is refused before the models load
    check_timeline_options(args.hop_seconds, args.threshold, args.min_duration)
    predictor = load_predictor(args.run, device=args.device or "auto", allow_missing_folds=args.allow_missing_folds)
    out = fsutil.check_writable(Path(args.out or "timelines"), folder=True)
    for path in args.files:
        timeline = predictor.timeline(path, hop_seconds=args.hop_seconds, threshold=args.threshold,
                                      min_duration_seconds=args.min_duration)
        written = timeline.write(out, stem=Path(path).stem)
        print(f"{path}: {len(timeline.events)} events above {args.threshold:g} "
              f"(windows of {timeline.window_s:g} s every {timeline.hop_s:g} s)")
        for _, e in timeline.events.iterrows():
            print(f"  {e['onset_s']:8.2f} - {e['offset_s']:8.2f} s  {e['peak']:.3f}  {e['label']}")
        print(f"  written: {', '.join(str(p) for p in written.values())}")
    return 0


def add_tag(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "tag", "print the top tags of audio files, or their events over time",
        "Decode each file and print the labels FOLDER (a run, an ensemble or a pipeline) rates highest. A folder "
        "of audio stands for the audio files under it. Files that cannot be decoded are reported and skipped; "
        "the exit status is then 1. --timeline scores windows centred every --hop-seconds over each file instead, "
        "and writes the scores (CSV), the events above --threshold (label, onset, offset, peak; CSV and JSON) "
        "and a plot to --out.",
        """
        audiotag tag --run runs/baseline dog_bark.wav street.flac recordings/ --top 3
        audiotag tag --run runs/pipeline --timeline long_recording.wav --hop-seconds 0.25 --threshold 0.4 --min-duration 1 --out timelines/
        """,
        parents=[shared.device])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--run", required=True, metavar="FOLDER", help="a run, ensemble or pipeline folder")
    p.add_argument("--top", type=int, default=5, metavar="N", help="labels shown per file (default 5)")
    p.add_argument("--allow-missing-folds", action="store_true",
                   help="tag with the fold models present when some are missing (default: an error)")
    g = p.add_argument_group("timelines")
    g.add_argument("--timeline", action="store_true", help="scores and events over time instead of top tags")
    g.add_argument("--hop-seconds", type=float, default=0.5, metavar="S", help="between window centres (default 0.5)")
    g.add_argument("--threshold", type=float, default=0.5, metavar="P", help="an event's score (default 0.5)")
    g.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="shortest event kept (default 0)")
    g.add_argument("--out", metavar="DIR", help="folder for the timeline files (default: timelines)")
    p.set_defaults(func=cmd_tag)


def cmd_audit(args) -> int:
    data = data_spec(args) if (args.data or args.csv) else None
    summary = audit_run(args.run, data=data, out=args.out, cache_dir=args.cache_dir, progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.run) / "audit"
    print(f"{summary['noisy_clips']} noisy clips: estimated {summary['estimated_wrong_given_labels']:.1%} of given "
          f"labels wrong, {summary['estimated_missing_true_labels']:.1%} of true labels missing")
    if summary["models_saw_noisy_clips"]:
        print("warning: this run trained on noisy clips; audit with a curated-only run for a fair estimate")
    print(f"report: {out / 'audit.md'}; every clip, most suspicious first: {out / 'audit_clips.csv'}")
    return 0


def add_audit(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "audit", "estimate how noisy the noisy set's labels are, per class and per clip",
        "Predict every noisy clip with the run's fold models (train the run on curated clips only, so "
        "they never heard these clips), calibrate on its out-of-fold curated predictions, and estimate the "
        "share of wrong given labels and of missing true labels, per class and overall. Lists the clips "
        "most likely mislabelled. Writes audit.md, audit_clips.csv, audit_classes.csv and audit.png.",
        "audiotag train --data data/fat2019 --out runs/curated\n"
        "audiotag audit runs/curated            # report in runs/curated/audit/",
        parents=[shared.data, shared.cache, shared.quiet])
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN_DIR/audit)")
    p.set_defaults(func=cmd_audit)


def cmd_export(args) -> int:
    written = export(args.run, out=args.out, fmt=args.format)
    print(f"wrote {len(written)} files to {args.out}: " + ", ".join(str(p.relative_to(args.out)) for p in written))
    return 0


def add_export(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "export", "export trained models as ONNX (fold models, input spec, an ensemble's blend)",
        "Write each fold model of FOLDER (a run, an ensemble or a pipeline) as ONNX: input `features` (batch, "
        "channels, bands, frames), output `probabilities`, batch and frames dynamic. model.json says how to make "
        "the features (the librosa calls that give the same log-mel) and how to average windows and folds; an "
        "ensemble's members each get a folder, and its fitted blend is copied beside them. Needs the onnx extra "
        "(pip install -e '.[onnx]').",
        "audiotag export runs/baseline --format onnx --out exported/\naudiotag export runs/pipeline --out exported/",
        parents=[shared.quiet])
    p.add_argument("run", metavar="FOLDER", help="a run, ensemble or pipeline folder")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the format (default onnx)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")
    p.set_defaults(func=cmd_export)
