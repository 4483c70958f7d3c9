"""Subcommands that combine runs: ensemble, pipeline, ablate, report."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..ensemble.blending import DEFAULT_BLENDS, ensemble_runs
from ..errors import AudiotagError
from ..recipes.ablation import (DEFAULT_LEVERS, DEFAULT_REPRESENTATIONS, DEFAULT_STRATEGIES, REPRESENTATIONS,
                                STRATEGIES, ablate)
from ..recipes.pipeline import run_pipeline
from ..recipes.recipe import bundled_recipe, load_recipe, with_budget
from ..report.html import build_report
from .options import Shared, add_subcommand, config_of, data_spec, overrides


def cmd_ensemble(args) -> int:
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


def add_ensemble(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "ensemble", "blend several finished runs: correlation, pruning, weighted blends, stacking",
        "Align the runs' out-of-fold and test predictions by fname (runs must share clips, folds and labels), "
        "report their Pearson correlation, drop members too correlated with a better one, and score every "
        "blend by nested cross-validation on the runs' folds. The blend with the best nested OOF lwlrap "
        "writes OUT/submission.csv; OUT/blends.md is the report.",
        "audiotag ensemble runs/vgg runs/resnet runs/vgg-seed1 --out runs/ensemble\n"
        "audiotag ensemble runs/* --out ens --blends mean,caruana,stack_logistic --prune 0.95",
        parents=[shared.quiet])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report and submission")
    p.add_argument("--blends", metavar="LIST",
                   help="comma-separated blends (default: all of mean, geometric, rank, weighted, caruana, "
         "stack_logistic, stack_mlp)")
    p.add_argument("--prune", type=float, default=0.97, metavar="R",
                   help="drop a run whose Pearson r with a better kept run exceeds R (default 0.97; 1 keeps all)")
    p.set_defaults(func=cmd_ensemble)


def cmd_pipeline(args) -> int:
    path = Path(args.recipe) if Path(args.recipe).is_file() or args.recipe.endswith((".yaml", ".yml")) \
        else bundled_recipe(args.recipe)
    recipe = load_recipe(path, overrides(args))
    if args.budget_minutes is not None:
        recipe = with_budget(recipe, args.budget_minutes)
    summary = run_pipeline(recipe, data_spec(args), out=args.out, base=load_config(args.config),
                           cache_dir=args.cache_dir, progress=not args.quiet, standardize=args.standardize)
    print((Path(args.out) / "pipeline.md").read_text(), end="")
    if "submission" in summary:
        print(f"submission: {summary['submission']}")
    return 0


def add_pipeline(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "pipeline", "run a recipe of stages (baseline, noisy set, other inputs, blend) to a submission",
        "RECIPE is a YAML file or a bundled recipe: demo (the demo data, minutes), cpu-small (a --scale small "
        "benchmark on a 2-core CPU), gpu-full (FSDKaggle2019 on a GPU). Every stage is a run folder under OUT; "
        "OUT/pipeline.json records what each stage was made from, so running the same command again skips "
        "finished stages, resumes an interrupted one and redoes only stages whose settings or inputs changed. "
        "Ends with OUT/submission.csv (the final stage's scores, standardised per label over the test set as "
        "predict does: --standardize) and OUT/pipeline.md (CV and test lwlrap, minutes and inference time per "
        "stage). --set applies to every stage, over the recipe. --budget-minutes caps the inference time "
        "of every ensemble stage (estimated for FAT2019's 3,361 test clips from this machine's measurement): "
        "TTA views and members are cut, least lwlrap lost first, and each cut is reported.",
        "audiotag pipeline demo --data demo/data --out runs/pipeline-demo\n"
        "audiotag pipeline demo --data demo/data --out runs/pipeline-demo --budget-minutes 2\n"
        "audiotag pipeline cpu-small --data .bench/small --out runs/pipeline --cache-dir .bench/cache\n"
        "audiotag pipeline my-recipe.yaml --data data/fat2019 --out runs/p --set train.epochs=5",
        parents=[shared.data, shared.config, shared.device, shared.cache, shared.workers, shared.standardize,
                 shared.quiet])
    p.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file, or demo | cpu-small | gpu-full")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the stages, report and submission")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="inference budget of the ensemble stages: minutes for 3,361 test clips (over the recipe's)")
    p.set_defaults(func=cmd_pipeline)


def cmd_ablate(args) -> int:
    chosen = args.strategies or args.variants
    named = {"noisy": DEFAULT_STRATEGIES, "representations": DEFAULT_REPRESENTATIONS, "levers": DEFAULT_LEVERS}
    if chosen in named:
        strategies = named[chosen]
    elif chosen:
        strategies = tuple(x.strip() for x in chosen.split(",") if x.strip())
    else:
        strategies = DEFAULT_STRATEGIES
    try:
        seeds = tuple(int(x) for x in args.seeds.split(","))
    except ValueError:
        raise AudiotagError(f"--seeds {args.seeds}: expected whole numbers separated by commas",
                            hint="e.g. --seeds 0,1") from None
    summary = ablate(data_spec(args), config_of(args), out=args.out, strategies=strategies, seeds=seeds,
                     cache_dir=args.cache_dir, progress=not args.quiet)
    print((Path(args.out) / "ablation.md").read_text(), end="")
    print(f"table: {Path(args.out) / 'ablation.csv'}; {len(summary['runs'])} run folders under {args.out}")
    return 0


def add_ablate(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "ablate", "compare noisy-set strategies, inputs or model families on the same folds and seeds",
        "Train each variant for each seed as a normal run folder under OUT, then write ablation.md/.csv: OOF "
        "lwlrap on curated clips, test lwlrap when the data has test labels, a paired bootstrap interval of each "
        "variant's gain over the baseline (curated when listed, else the first), the Pearson correlation of its "
        "OOF predictions with the baseline's, minutes per run. "
        f"Noisy-set strategies: {', '.join(STRATEGIES)}. Inputs and models: {', '.join(REPRESENTATIONS)}. "
        f"Levers for unseen recordings ('levers'): {', '.join(DEFAULT_LEVERS)}. Re-running continues where it "
        "stopped.",
        "audiotag ablate --data .bench/small --out runs/ablation --seeds 0,1 --set train.epochs=40\n"
        "audiotag ablate --data .bench/small --out runs/inputs --variants representations --seeds 0\n"
        "audiotag ablate --data data/fat2019 --out runs/abl --strategies curated,pretrain,pseudo_agree",
        parents=[shared.data, shared.config, shared.device, shared.cache, shared.workers, shared.quiet])
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the runs and the table")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--strategies", metavar="LIST", help="comma-separated variants, or 'noisy' (the default: "
                                               "curated,joint,joint_lq,pretrain,pseudo_agree,mixmatch)")
    choice.add_argument("--variants", metavar="LIST", help="same as --strategies; 'representations' = logmel,"
                                             "logmel_deltas,mfcc,cqt,logmel_phase,wavecnn,crnn; 'levers' = curated and the levers")
    p.add_argument("--seeds", default="0,1", metavar="LIST", help="comma-separated seeds (default: 0,1)")
    p.set_defaults(func=cmd_ablate)


def cmd_report(args) -> int:
    page = build_report(args.target, args.out, ablations=args.ablation or [], progress=not args.quiet)
    print(f"report: {page} (one self-contained HTML file; open it in a browser)")
    return 0


def add_report(subs, shared: Shared) -> None:
    p = add_subcommand(
        subs, "report", "one self-contained HTML page about a run or a pipeline",
        "Data summary, every stage's CV and test lwlrap, time and inference cost, ablation tables (--ablation), "
        "per-class lwlrap of the final predictions, the ensemble's correlation heatmap, training curves and "
        "example spectrograms with predicted vs true tags, in OUT/index.html with the images embedded.",
        "audiotag report runs/pipeline --out runs/pipeline/report\n"
        "audiotag report runs/baseline --out report --ablation runs/ablation",
        parents=[shared.quiet])
    p.add_argument("target", metavar="RUN_OR_PIPELINE", help="a run folder or a pipeline folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.html")
    p.add_argument("--ablation", action="append", metavar="DIR", help="an `audiotag ablate` folder to include "
                                                        "(repeatable)")
    p.set_defaults(func=cmd_report)
