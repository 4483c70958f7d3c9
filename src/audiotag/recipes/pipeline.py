"""``audiotag pipeline``: a recipe's stages run in order, each an ordinary run folder, ending with
``OUT/submission.csv``.

Each stage's fingerprint (its resolved settings, its data and its inputs' fingerprints) is recorded
in ``OUT/pipeline.json`` with the settings it was made from. Re-running skips a finished stage whose
fingerprint is unchanged, resumes an interrupted one, and redoes (after moving the old folder
aside) one whose settings or inputs changed, so a killed pipeline continues where it stopped
without repeating finished work. A setting that a newer audiotag added does not count as a change
while it is at its default: the recorded settings show which settings the stage knew. A
``pipeline.json`` of another fingerprint schema is not guessed at: its stages are re-run, and
the log says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from .. import fsutil
from ..config import Config, read_yaml
from ..engine.callbacks import duration
from ..ensemble.blending import DEFAULT_BLENDS, blend_members
from ..ensemble.budget import BudgetMember, fit_budget, kaggle_minutes, predict_by_view
from ..ensemble.estimators import MeanBlend
from ..ensemble.members import Member, load_member, member_records, member_truth
from ..ensemble.persist import save_blender
from ..errors import AudiotagError
from ..inference.standardize import applies as standardize_applies, check_mode as check_standardize, standardize_labels
from ..metrics import lwlrap
from ..runs import DataSpec, Run, fold_done, read_predictions, result_settings, write_predictions
from ..training.train import resume, train
from .recipe import STAGE_PATHS, Recipe, Stage, portable_settings, stage_config

# Bumped whenever what a fingerprint covers changes; pipeline.json records it.
FINGERPRINT_SCHEMA = 2


def fingerprint(*parts: object) -> str:
    text = json.dumps([FINGERPRINT_SCHEMA, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def only_new_defaults(recorded, current, defaults) -> bool:
    """Whether ``current`` settings equal ``recorded`` ones except for settings ``recorded`` lacks
    (added by a newer audiotag), each at its built-in default in ``defaults``."""
    if not isinstance(current, dict) or not isinstance(recorded, dict):
        return recorded == current
    for key, value in current.items():
        if key in recorded:
            if not only_new_defaults(recorded[key], value, defaults.get(key, {}) if isinstance(defaults, dict) else {}):
                return False
        elif not isinstance(defaults, dict) or key not in defaults or defaults[key] != value:
            return False
    return True


class StageState:
    """What ``pipeline.json`` recorded of each stage, and the decision to keep or redo it."""

    def __init__(self, out: Path, recipe: Recipe, data: DataSpec, log):
        self.path, self.recipe, self.data, self.log = out / "pipeline.json", recipe, data, log
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.recorded: dict = state.get("stages", {})
        if self.recorded and state.get("fingerprint_schema") != FINGERPRINT_SCHEMA:
            log(f"{self.path} was written by another version of audiotag (fingerprint schema "
                f"{state.get('fingerprint_schema', 1)}, this one {FINGERPRINT_SCHEMA}): its stages are re-run, "
                "and their old folders moved to .replaced/")
            self.recorded = {}
        self.fingerprints: dict[str, str] = {}
        self.kept: set[str] = set()  # stages whose finished or partial work stands
        self.defaults = {"config": portable_settings(result_settings(Config()), Stage(name="defaults")),
                         "data": vars(DataSpec())}  # a new data option counts as unchanged only at its default

    def settings(self, stage: Stage, config: Config | None) -> dict:
        if config is None:
            return {"ensemble": stage.ensemble, "blends": stage.blends, "prune": stage.prune,
                    "budget_minutes": stage.budget_minutes}
        return {"config": portable_settings(result_settings(config), stage), "data": vars(self.data)}

    def decide(self, stage: Stage, config: Config | None, folder: Path) -> tuple[str, dict]:
        """The stage's fingerprint and settings; marks it kept when its recorded work still stands."""
        settings = self.settings(stage, config)
        fp = fingerprint(settings, [self.fingerprints[d] for d in stage.inputs])
        self.fingerprints[stage.name] = fp
        previous = self.recorded.get(stage.name, {})
        inputs_kept = all(d in self.kept for d in stage.inputs)
        if previous.get("fingerprint") == fp or (folder.exists() and inputs_kept and "settings" in previous
                                                 and only_new_defaults(previous["settings"], settings, self.defaults)):
            self.kept.add(stage.name)
        return fp, settings

    def save(self, *, extra: dict | None = None) -> None:
        _save_state(self.path, self.recipe, self.recorded, extra=extra)


def _follow_moved_stage_paths(run: Run, config: Config) -> None:
    """Point an unfinished run's saved teacher / pseudo-label paths at the stages' current folders.
    Its fingerprint already matched, so only those paths can differ: the pipeline folder moved, and
    the saved paths lead to where it used to be."""
    saved = read_yaml(run.dir / "config.yaml")  # as written: its keys tell which settings the run knew
    noisy = saved.setdefault("noisy", {})
    moved = {k: getattr(config.noisy, k) for k in STAGE_PATHS if noisy.get(k) != getattr(config.noisy, k)}
    if not moved:
        return
    noisy.update(moved)
    fsutil.write_text(run.dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
    run.log("the pipeline folder has moved: " + ", ".join(f"noisy.{k} is now {v}" for k, v in moved.items()))


def _train_stage(stage: Stage, config: Config, folder: Path, *, fp: str, settings: dict, state: StageState,
                 data: DataSpec, cache_dir, progress: bool, say) -> dict:
    if (folder / "run.json").exists():
        run = Run.open(folder)
        if run.info.get("status") == "done":
            say("done earlier, reused")
        else:
            say("resuming")
            _follow_moved_stage_paths(run, config)
            run = resume(folder, progress=progress)
    else:
        say(f"training ({config.model.name}, noisy {config.noisy.strategy}, {config.train.folds} folds x "
            f"{config.train.epochs} epochs)")
        state.recorded[stage.name] = {"fingerprint": fp, "settings": settings, "status": "running"}
        state.save()
        run = train(data, config, out=folder, cache_dir=cache_dir, progress=progress)
    scores = run.scores or {}
    return {"kind": "train", "folder": folder.name, "oof_lwlrap": scores.get("oof_lwlrap"),
            "test_lwlrap": scores.get("test_lwlrap"), "minutes": run.info.get("wall_seconds", 0) / 60,
            "inference_ms_per_clip": scores.get("test_inference_ms_per_clip")}


def _blend_stage(stage: Stage, folder: Path, out: Path, results: dict, *, cache_dir, progress: bool, say,
                 log) -> dict:
    t0 = time.perf_counter()
    done = folder / "ensemble.json"
    if done.exists():
        say("done earlier, reused")
        summary = json.loads(done.read_text())
    else:
        members = [load_member(out / m, m) for m in stage.ensemble]
        ms_per_clip = {m: results[m]["inference_ms_per_clip"] for m in stage.ensemble}
        cuts: list[dict] = []
        if stage.budget_minutes is not None:
            if any(v is None for v in ms_per_clip.values()):
                raise AudiotagError("an inference budget needs every member's measured inference time",
                                    hint="the members must have predicted a test split")
            candidates = [BudgetMember(m, ms_per_clip[m.name], m.run.config.predict.tta_views) for m in members]
            members, ms_per_clip, cuts = fit_budget(
                candidates, stage.budget_minutes,
                predict=lambda m: predict_by_view(m, cache_dir=cache_dir, progress=progress))
            for cut in cuts:
                log(f"    budget: cut {cut['dropped']} ({cut['minutes_before']:.1f} -> "
                    f"{cut['minutes_after']:.1f} min, mean-blend OOF lwlrap {cut['oof_before']:.4f} -> "
                    f"{cut['oof_after']:.4f})")
        say(f"blending {', '.join(m.name for m in members)}")
        extra = {"member_ms_per_clip": ms_per_clip, "budget_cuts": cuts}
        if len(members) > 1:
            summary = blend_members(members, out=folder, blends=tuple(stage.blends or DEFAULT_BLENDS),
                                    prune_threshold=stage.prune, progress=progress, extra=extra)
        else:
            summary = {**_single(members[0], folder), **extra}
            fsutil.write_text(folder / "ensemble.json", json.dumps(summary, indent=2))
    chosen = next(b for b in summary["blends"] if b["blend"] == summary["chosen"])
    used, unused, ms_per_clip = ensemble_inference(
        summary, {m: results[m]["inference_ms_per_clip"] for m in summary["kept"]})
    return {"kind": "ensemble", "folder": folder.name, "oof_lwlrap": chosen["nested_oof_lwlrap"],
            "test_lwlrap": chosen.get("test_lwlrap"), "blend": summary["chosen"], "members": used,
            "zero_weight": unused, "minutes": (time.perf_counter() - t0) / 60,
            "budget_cuts": summary.get("budget_cuts", []), "inference_ms_per_clip": ms_per_clip}


def run_pipeline(recipe: Recipe, data: DataSpec, *, out: str | Path, base: Config | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True, log=print,
                 standardize: str = "auto") -> dict:
    """Run every stage of ``recipe`` into ``out``; returns the summary written to ``pipeline.json``.
    ``OUT/submission.csv`` is the final stage's test predictions, standardised per label as
    :func:`audiotag.predictor.predict_submission` does (``standardize``: auto | yes | no)."""
    check_standardize(standardize)
    base = base or Config()
    data.load()  # a dataset that cannot be read at all is refused before anything is written
    out = fsutil.check_writable(out, folder=True)
    fsutil.remove_orphaned_temporaries(out)  # a killed run's half-written files (stages resume below)
    data = data.absolute()
    state = StageState(out, recipe, data, log)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    configs = {s.name: stage_config(recipe, s, base=base, out=out) for s in recipe.stages if s.ensemble is None}
    for i, stage in enumerate(recipe.stages, 1):
        def say(message: str, i=i, stage=stage) -> None:
            log(f"[{i}/{len(recipe.stages)}] {stage.name}: {message}")

        folder = out / stage.name
        config = configs.get(stage.name)
        fp, settings = state.decide(stage, config, folder)
        if stage.name not in state.kept and folder.exists():
            aside = out / ".replaced" / f"{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(folder), str(aside))
            say(f"settings or inputs changed; old folder moved to {aside}")
        if config is not None:
            left = training_left(results, configs, out, now=stage.name)
            if left:
                say(left)
            results[stage.name] = _train_stage(stage, config, folder, fp=fp, settings=settings, state=state,
                                               data=data, cache_dir=cache_dir, progress=progress, say=say)
        else:
            results[stage.name] = _blend_stage(stage, folder, out, results, cache_dir=cache_dir, progress=progress,
                                               say=say, log=log)
        state.recorded[stage.name] = {"fingerprint": fp, "settings": settings, "status": "done", **results[stage.name]}
        state.save()
    final = recipe.final
    source = out / final.name / ("submission.csv" if final.ensemble else "test_predictions.csv")
    summary = {"stages": results, "final_stage": final.name, "recipe": recipe.source,
               "wall_minutes_this_call": (time.perf_counter() - started) / 60}
    if source.exists():
        fnames, labels, probs = read_predictions(source)
        summary["submission_standardized"] = standardize_applies(standardize, len(fnames), len(labels))
        rows = standardize_labels(probs) if summary["submission_standardized"] else probs
        if summary["submission_standardized"]:
            write_predictions(out / "submission.csv", fnames, tuple(labels), rows)
            log(f"submission: {final.name}'s scores standardised per label over the {len(fnames)} test clips")
        else:
            fsutil.write_bytes(out / "submission.csv", source.read_bytes())
        summary["submission"] = str(out / "submission.csv")
        summary["submission_test_lwlrap"] = _test_lwlrap(data, fnames, labels, rows)
        if summary["submission_test_lwlrap"] is not None:
            log(f"submission: test lwlrap {summary['submission_test_lwlrap']:.4f} against the dataset's test labels")
    state.save(extra=summary)
    fsutil.write_text(out / "pipeline.md", _markdown(results, final.name, submission=summary))
    return summary


def epochs_to_train(config: Config, folder: Path | None = None) -> int:
    """Epochs of a stage's folds that have not finished in ``folder`` (a fold cut short counts in
    full); all of them without a folder."""
    folds = config.train.only_folds if config.train.only_folds is not None else range(config.train.folds)
    return config.train.epochs * sum(folder is None or not fold_done(folder, k) for k in folds)


def epoch_cost(config: Config) -> float:
    """An epoch's batches relative to curated clips alone: noisy or test rows, a fixed share of each
    batch, add batches to every pass over the curated clips."""
    n = config.noisy
    share = (n.batch_fraction if n.strategy in ("joint", "pseudo") else 0.0) + (n.test_batch_fraction or 0.0)
    return 1 / (1 - share)


def training_left(results: dict, configs: dict[str, Config], out: Path, *, now: str) -> str:
    """``about 1 h 35 min of training left ...``: the epochs of stage ``now`` and the training
    stages after it, at the pace of the training stages before it; "" before any has trained, and
    for a finished stage (reused without a word)."""
    names = list(configs)
    if not epochs_to_train(configs[now], out / now):
        return ""
    before = [n for n in names[:names.index(now)] if results.get(n, {}).get("minutes")]
    trained = sum(epochs_to_train(configs[n]) * epoch_cost(configs[n]) for n in before)
    left = sum(epochs_to_train(configs[n], out / n) * epoch_cost(configs[n]) for n in names[names.index(now):])
    if not trained or not left:
        return ""
    per_epoch = sum(results[n]["minutes"] for n in before) * 60 / trained
    return (f"about {duration(left * per_epoch)} of training left in the pipeline (at the {per_epoch:.1f} s "
            "an epoch of the stages before)")


def _test_lwlrap(data: DataSpec, fnames: list[str], labels: list[str], rows: np.ndarray) -> float | None:
    """The submission's lwlrap where the dataset labels every one of its clips (a benchmark), else None."""
    ds = data.load(audio=False)
    truth = {c.fname: c for c in ds.split("test")} if ds.test_labelled else {}
    if list(ds.vocabulary) != list(labels) or not fnames or any(f not in truth for f in fnames):
        return None
    return float(lwlrap(ds.label_matrix([truth[f] for f in fnames]), rows))


def _single(member: Member, folder: Path) -> dict:
    """An ensemble stage left with one member: its predictions, passed through."""
    write_predictions(folder / "oof_predictions.csv", member.oof_fnames, tuple(member.vocabulary), member.oof,
                      extra={"fold": [member.folds[f] for f in member.oof_fnames]})
    write_predictions(folder / "submission.csv", member.test_fnames, tuple(member.vocabulary), member.test)
    y, y_test = member_truth(member, member.oof_fnames, member.test_fnames)
    row = {"blend": "single", "nested_oof_lwlrap": lwlrap(y, member.oof),
           "test_lwlrap": None if y_test is None else lwlrap(y_test, member.test)}
    save_blender(folder, "single", MeanBlend("arithmetic").fit(member.test[:, None]), members=[member.name])
    return {"members": [str(member.run.dir)], "kept": [member.name], "blends": [row], "chosen": "single",
            "submission": str(folder / "submission.csv"), "member_records": member_records([member], folder)}


def ensemble_inference(summary: dict, member_ms: dict[str, float | None]) -> tuple[list[str], list[str], float | None]:
    """The members an ensemble's chosen blend needs at inference, those it gives no weight (a
    weighted or Caruana blend may give some none: they need not be predicted, nor timed), and the
    inference ms per clip of the first. A member's time measured for the stage (its budget) wins
    over ``member_ms``, the time of its own stage."""
    weights = summary.get("chosen_weights")
    used = [m for m in summary["kept"] if weights is None or weights.get(m, 0.0) > 0]
    measured = summary.get("member_ms_per_clip", {})
    return (used, [m for m in summary["kept"] if m not in used],
            _sum_or_none(measured.get(m, member_ms.get(m)) for m in used))


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def _save_state(path: Path, recipe: Recipe, stages: dict, *, extra: dict | None = None) -> None:
    body = {"recipe": recipe.source, "fingerprint_schema": FINGERPRINT_SCHEMA, "changes": recipe.changes,
            "forced": recipe.forced, **(extra or {}), "stages": stages}
    fsutil.write_text(path, json.dumps(body, indent=2, default=str))


def _markdown(results: dict[str, dict], final: str, *, submission: dict | None = None) -> str:
    lines = ["| stage | kind | OOF lwlrap | test lwlrap | minutes | inference ms/clip | est. for 3,361 clips |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"
        ms = r.get("inference_ms_per_clip")
        estimate = f"{kaggle_minutes(ms):.1f} min" if ms is not None else "-"
        kind = r["kind"]
        if kind == "ensemble":
            unused = f"; weight 0: {', '.join(r['zero_weight'])}" if r.get("zero_weight") else ""
            kind += f" ({r['blend']}: {', '.join(r['members'])}{unused})"
        lines.append(f"| {name}{' (final)' if name == final else ''} | {kind} | {f(r['oof_lwlrap'], '.4f')} | "
                     f"{f(r.get('test_lwlrap'), '.4f')} | {r['minutes']:.1f} | {f(ms, '.1f')} | {estimate} |")
    if submission and submission.get("submission_test_lwlrap") is not None:
        how = "standardised per label" if submission.get("submission_standardized") else "as they are"
        lines.append(f"| submission.csv | {final}'s test predictions, {how} | - | "
                     f"{submission['submission_test_lwlrap']:.4f} | - | - | - |")
    lines += ["", "Inference time is measured on this machine's test predictions (all folds, TTA included); the "
              "estimate scales it to FAT2019's 3,361 private test clips (its kernels had one GPU hour). An "
              "ensemble counts the members its blend weighs, not those given weight 0.", ""]
    for name, r in results.items():
        for cut in r.get("budget_cuts", []):
            lines.append(f"- {name}: inference budget cut **{cut['dropped']}**: {cut['minutes_before']:.1f} → "
                         f"{cut['minutes_after']:.1f} min, mean-blend OOF lwlrap {cut['oof_before']:.4f} → "
                         f"{cut['oof_after']:.4f} ({cut['oof_after'] - cut['oof_before']:+.4f})")
    lines.append("")
    return "\n".join(lines)
