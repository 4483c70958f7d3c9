"""``audiotag pipeline``: a recipe of stages run in order, each an ordinary run folder, ending with
``submission.csv``.

A recipe is YAML data::

    set:                      # overrides for every stage (dotted keys)
      train.epochs: 30
    stages:
      - name: baseline        # a training stage: a run folder OUT/baseline
      - name: pseudo
        variant: pseudo_agree # a named variant of `audiotag ablate` (config changes)
        teacher: baseline     # pseudo-labelling: the finished stage that labels the noisy clips
      - name: cqt
        set: {features.channels: [logmel, cqt]}
      - name: blend           # an ensemble stage: blends finished stages, writes the submission
        ensemble: [baseline, pseudo, cqt]
        budget_minutes: 60    # optional: inference budget for 3,361 test clips (see budget.py)
      - name: test_pl
        pseudo_labels: blend  # pseudo-labelling the test set with an earlier stage's test predictions
      - name: final
        ensemble: [baseline, pseudo, cqt, test_pl]

Each stage's fingerprint (its resolved config and its inputs' fingerprints) is recorded in
``OUT/pipeline.json``. Re-running skips a finished stage whose fingerprint is unchanged, resumes
an interrupted one, and redoes (after moving the old folder aside) one whose config or inputs
changed, so a killed pipeline continues where it stopped without repeating finished work. A
setting that a newer audiotag added, still at its default, does not count as a change: the saved
config of the stage's run shows which settings it knew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import fsutil
from ..config import Config, _merge, config_from_dict, parse_override
from ..errors import AudiotagError, ConfigError
from ..metrics import lwlrap
from .ablation import VARIANTS
from .budget import BudgetMember, fit_budget, kaggle_minutes, predict_by_view
from .ensemble import Member, _truth
from .runs import DataSpec, Run, result_settings, write_predictions

STAGE_KEYS = {"name", "set", "variant", "teacher", "pseudo_labels", "ensemble", "blends", "prune", "budget_minutes"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Stage:
    name: str
    changes: dict = field(default_factory=dict)  # nested config overrides
    teacher: str | None = None
    pseudo_labels: str | None = None  # a finished stage (training or ensemble) whose test predictions label the test clips
    ensemble: list[str] | None = None
    blends: list[str] | None = None
    prune: float = 0.97
    # Ensemble stages: the most minutes inference may take on FAT2019's 3,361 test clips (as measured
    # on this machine); TTA views and members are cut (budget.py) until the blend fits.
    budget_minutes: float | None = None

    @property
    def inputs(self) -> list[str]:
        return (list(self.ensemble or []) + ([self.teacher] if self.teacher else [])
                + ([self.pseudo_labels] if self.pseudo_labels else []))


@dataclass
class Recipe:
    stages: list[Stage]
    changes: dict = field(default_factory=dict)  # the recipe's `set`, under each stage's own
    forced: dict = field(default_factory=dict)  # command-line --set: over everything
    source: str = ""

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _nested(flat: dict, where: str) -> dict:
    """``{"train.epochs": 30}`` or nested dicts -> nested dict, via the same parser as ``--set``."""
    if not isinstance(flat, dict):
        raise ConfigError(f"{where}: `set` must be a mapping of setting: value")
    out: dict = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            out = _merge(out, {key: _nested(value, where)})
        else:
            out = _merge(out, parse_override(f"{key}={json.dumps(value)}"))
    return out


def parse_recipe(data: dict, *, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"{source}: a pipeline recipe needs a non-empty `stages` list")
    unknown = set(data) - {"set", "stages", "description"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}", hint="use set, stages, description")
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["stages"]):
        where = f"{source}: stage {i + 1}"
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{where} needs a `name`")
        bad = set(raw) - STAGE_KEYS
        if bad:
            raise ConfigError(f"{where} ({raw['name']}): unknown key(s) {sorted(bad)}",
                              hint=f"a stage takes {', '.join(sorted(STAGE_KEYS))}")
        name = str(raw["name"])
        if not NAME.match(name) or name in seen:
            raise ConfigError(f"{where}: stage name {name!r} is " + ("used twice" if name in seen else
                              "not a plain folder name (letters, digits, _ . -)"))
        changes: dict = {}
        if "variant" in raw:
            if raw["variant"] not in VARIANTS:
                raise ConfigError(f"{where} ({name}): unknown variant {raw['variant']!r}",
                                  hint=f"choose from {', '.join(VARIANTS)}")
            changes = _nested(VARIANTS[raw["variant"]], where)
        changes = _merge(changes, _nested(raw.get("set") or {}, where))
        stage = Stage(name=name, changes=changes, teacher=raw.get("teacher"), pseudo_labels=raw.get("pseudo_labels"),
                      ensemble=raw.get("ensemble"),
                      blends=raw.get("blends"), prune=float(raw.get("prune", 0.97)),
                      budget_minutes=None if raw.get("budget_minutes") is None else float(raw["budget_minutes"]))
        if stage.budget_minutes is not None and (stage.ensemble is None or stage.budget_minutes <= 0):
            raise ConfigError(f"{where} ({name}): budget_minutes is a positive number for ensemble stages")
        for dep in stage.inputs:
            if dep not in seen:
                raise ConfigError(f"{where} ({name}) uses stage {dep!r}, which is not an earlier stage")
        if stage.ensemble is not None and (len(stage.ensemble) < 2 or changes or stage.teacher or stage.pseudo_labels):
            raise ConfigError(f"{where} ({name}): an ensemble stage lists two or more earlier stages and nothing else")
        if stage.ensemble is None and stage.teacher is None and changes.get("noisy", {}).get("strategy") == "pseudo":
            raise ConfigError(f"{where} ({name}): pseudo-labelling needs `teacher: <an earlier curated-only stage>`")
        stages.append(stage)
        seen.add(name)
    for stage in stages:
        for dep in list(stage.ensemble or []) + ([stage.teacher] if stage.teacher else []):  # pseudo_labels: any stage
            if next(s for s in stages if s.name == dep).ensemble is not None:
                raise ConfigError(f"stage {stage.name} uses ensemble stage {dep} as an input; use training stages")
    return Recipe(stages=stages, changes=_nested(data.get("set") or {}, source), source=source)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    from ..config import read_yaml

    recipe = parse_recipe(read_yaml(path), source=str(path))
    for text in overrides:
        recipe.forced = _merge(recipe.forced, parse_override(text))
    return recipe


def with_budget(recipe: Recipe, minutes: float) -> Recipe:
    """The recipe with an inference budget of ``minutes`` on every ensemble stage."""
    if not minutes > 0:
        raise ConfigError(f"an inference budget is a positive number of minutes, not {minutes:g}")
    if not any(s.ensemble for s in recipe.stages):
        raise ConfigError("an inference budget applies to ensemble stages; this recipe has none",
                          hint="add a stage with `ensemble: [...]`, or leave out --budget-minutes")
    stages = [dataclasses.replace(s, budget_minutes=minutes) if s.ensemble else s for s in recipe.stages]
    return dataclasses.replace(recipe, stages=stages)


def bundled_recipe(name: str) -> Path:
    path = Path(__file__).resolve().parents[1] / "configs" / f"pipeline-{name}.yaml"
    if not path.exists():
        raise AudiotagError(f"no bundled recipe {name!r}", hint="choose cpu-small, gpu-full or demo, or give a YAML file")
    return path


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _unchanged_but_for_new_settings(stage: Stage, config: Config | None, folder: Path, data, recorded_fp: str | None,
                                    old_fingerprints: dict[str, str | None], kept: set[str]) -> bool:
    """Whether a stage's recorded fingerprint differs only because this version of audiotag has
    settings the stage's run did not know, each at its built-in default (new settings default to
    the old behaviour), so that upgrading does not redo hours of finished training. Its inputs
    must all have been kept too.

    The recorded fingerprint may come from any version since the run: one that knew some of those
    settings (and recorded them at their defaults, reusing the stage). So every subset of them is
    tried with the settings the run's saved config holds. Versions before stage outputs were named
    by stage hashed the absolute paths to them: that form is tried with the run's saved paths."""
    if recorded_fp is None or not all(d in kept for d in stage.inputs):
        return False
    inputs = [old_fingerprints.get(d) for d in stage.inputs]
    if config is None:  # an ensemble stage: only its inputs' fingerprints can have moved
        return _fingerprint(stage.ensemble, stage.blends, stage.prune, stage.budget_minutes, inputs) == recorded_fp
    from ..config import read_yaml
    try:
        saved = read_yaml(folder / "config.yaml")
    except ConfigError:  # no readable saved config: nothing to compare with
        return False
    defaults = result_settings(Config())
    current = result_settings(config)
    forms = [_portable(current, stage)]
    if stage.teacher or stage.pseudo_labels:  # recorded before stage outputs were named by stage
        noisy = saved.get("noisy") if isinstance(saved.get("noisy"), dict) else {}
        forms.append({**current, "noisy": {**current["noisy"], **{k: noisy[k] for k in STAGE_PATHS if k in noisy}}})
    return any(_matches_some_older_version(form, saved, defaults, recorded_fp, data, inputs) for form in forms)


def _matches_some_older_version(current: dict, saved: dict, defaults: dict, recorded_fp: str, data,
                                inputs: list) -> bool:
    known: dict = {}
    unknown: list[tuple[str, str | None]] = []  # settings the run did not know, at their defaults
    for section, values in current.items():
        if not isinstance(values, dict):
            if section in saved:
                known[section] = values
            elif values != defaults.get(section):
                return False
            else:
                unknown.append((section, None))
            continue
        old = saved.get(section)
        if isinstance(old, dict):
            known[section] = {}
        for key, value in values.items():
            if isinstance(old, dict) and key in old:
                known[section][key] = value
            elif value != defaults[section][key]:
                return False
            else:
                unknown.append((section, key))
    if len(unknown) > 12:  # far too many versions apart to search
        unknown = []
    for mask in range(2 ** len(unknown)):
        settings = json.loads(json.dumps(known))
        for bit, (section, key) in enumerate(unknown):
            if mask >> bit & 1:
                if key is None:
                    settings[section] = current[section]
                else:
                    settings.setdefault(section, {})[key] = current[section][key]
        if _fingerprint(settings, vars(data), inputs) == recorded_fp:
            return True
    return False


# Settings a recipe fills with paths to another stage's outputs inside OUT. A fingerprint names the
# stage instead (whose own fingerprint is among the inputs), so a moved or copied OUT is reused.
STAGE_PATHS = ("teacher", "test_predictions")


def _portable(settings: dict, stage: Stage) -> dict:
    named = {"teacher": stage.teacher, "test_predictions": stage.pseudo_labels}
    return {**settings, "noisy": {**settings["noisy"],
                                  **{k: f"stage {named[k]}" for k in STAGE_PATHS if named[k]}}}


def _follow_moved_stage_paths(run: Run, config: Config) -> None:
    """Point an unfinished run's saved teacher / pseudo-label paths at the stages' current folders.
    Its fingerprint already matched, so only those paths can differ: the pipeline folder moved, and
    the saved paths lead to where it used to be."""
    from ..config import read_yaml

    saved = read_yaml(run.dir / "config.yaml")  # as written: its keys tell which settings the run knew
    noisy = saved.setdefault("noisy", {})
    moved = {k: getattr(config.noisy, k) for k in STAGE_PATHS if noisy.get(k) != getattr(config.noisy, k)}
    if not moved:
        return
    noisy.update(moved)
    fsutil.write_text(run.dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
    run.log("the pipeline folder has moved: " + ", ".join(f"noisy.{k} is now {v}" for k, v in moved.items()))


def stage_config(recipe: Recipe, stage: Stage, *, base: Config, out: Path) -> Config:
    data = _merge(_merge(_merge(base.to_dict(), recipe.changes), stage.changes), recipe.forced)
    if stage.teacher:
        data = _merge(data, {"noisy": {"teacher": str((out / stage.teacher).resolve())}})
    if stage.pseudo_labels:
        source = next(s for s in recipe.stages if s.name == stage.pseudo_labels)
        predictions = out / source.name / ("submission.csv" if source.ensemble is not None else "test_predictions.csv")
        data = _merge(data, {"noisy": {"test_predictions": str(predictions.resolve())}})
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"stage {stage.name}: {e.message}", hint=e.hint) from None


def run_pipeline(recipe: Recipe, data: DataSpec, *, out: str | Path, base: Config | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Run every stage of ``recipe`` into ``out``; returns the summary written to ``pipeline.json``."""
    from .ensemble import DEFAULT_BLENDS, blend_members, load_member
    from .train import resume, train

    base = base or Config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "pipeline.json"
    fsutil.remove_orphaned_temporaries(out)  # a killed run's half-written files (stages resume below)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    recorded = state.get("stages", {})
    data = data.absolute()
    fingerprints: dict[str, str] = {}
    old_fingerprints = {name: r.get("fingerprint") for name, r in recorded.items()}
    kept: set[str] = set()  # stages whose finished or partial work stands
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for i, stage in enumerate(recipe.stages, 1):
        folder = out / stage.name
        if stage.ensemble is None:
            config = stage_config(recipe, stage, base=base, out=out)
            fp = _fingerprint(_portable(result_settings(config), stage), vars(data),
                              [fingerprints[d] for d in stage.inputs])
        else:
            config = None
            fp = _fingerprint(stage.ensemble, stage.blends, stage.prune, stage.budget_minutes,
                              [fingerprints[d] for d in stage.inputs])
        fingerprints[stage.name] = fp
        previous = recorded.get(stage.name, {})
        if previous.get("fingerprint") == fp or (folder.exists() and _unchanged_but_for_new_settings(
                stage, config, folder, data, previous.get("fingerprint"), old_fingerprints, kept)):
            kept.add(stage.name)
        elif folder.exists():
            aside = out / ".replaced" / f"{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(folder), str(aside))
            log(f"[{i}/{len(recipe.stages)}] {stage.name}: settings or inputs changed; old folder moved to {aside}")
        t0 = time.perf_counter()
        if stage.ensemble is None:
            if (folder / "run.json").exists():
                run = Run.open(folder)
                if run.info.get("status") == "done":
                    log(f"[{i}/{len(recipe.stages)}] {stage.name}: done earlier, reused")
                else:
                    log(f"[{i}/{len(recipe.stages)}] {stage.name}: resuming")
                    _follow_moved_stage_paths(run, config)
                    run = resume(folder, progress=progress)
            else:
                log(f"[{i}/{len(recipe.stages)}] {stage.name}: training ({config.model.name}, "
                    f"noisy {config.noisy.strategy}, {config.train.folds} folds x {config.train.epochs} epochs)")
                recorded[stage.name] = {"fingerprint": fp, "status": "running"}
                _save_state(state_path, recipe, recorded)
                run = train(data, config, out=folder, cache_dir=cache_dir, progress=progress)
            scores = run.scores or {}
            results[stage.name] = {"kind": "train", "folder": str(folder), "oof_lwlrap": scores.get("oof_lwlrap"),
                                   "test_lwlrap": scores.get("test_lwlrap"),
                                   "minutes": run.info.get("wall_seconds", 0) / 60,
                                   "inference_ms_per_clip": scores.get("test_inference_ms_per_clip")}
        else:
            done = folder / "ensemble.json"
            if done.exists():
                log(f"[{i}/{len(recipe.stages)}] {stage.name}: done earlier, reused")
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
                log(f"[{i}/{len(recipe.stages)}] {stage.name}: blending {', '.join(m.name for m in members)}")
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
            results[stage.name] = {"kind": "ensemble", "folder": str(folder), "oof_lwlrap": chosen["nested_oof_lwlrap"],
                                   "test_lwlrap": chosen.get("test_lwlrap"), "blend": summary["chosen"],
                                   "members": used, "zero_weight": unused, "minutes": (time.perf_counter() - t0) / 60,
                                   "budget_cuts": summary.get("budget_cuts", []), "inference_ms_per_clip": ms_per_clip}
        recorded[stage.name] = {"fingerprint": fp, "status": "done", **results[stage.name]}
        _save_state(state_path, recipe, recorded)
    final = recipe.final
    final_folder = out / final.name
    source = final_folder / ("submission.csv" if final.ensemble else "test_predictions.csv")
    summary = {"stages": results, "final_stage": final.name, "recipe": recipe.source,
               "wall_minutes_this_call": (time.perf_counter() - started) / 60}
    if source.exists():
        fsutil.write_bytes(out / "submission.csv", source.read_bytes())
        summary["submission"] = str(out / "submission.csv")
    _save_state(state_path, recipe, recorded, extra=summary)
    fsutil.write_text(out / "pipeline.md", _markdown(results, final.name))
    return summary


def _single(member: Member, folder: Path) -> dict:
    """An ensemble stage left with one member: its predictions, passed through."""
    write_predictions(folder / "oof_predictions.csv", member.oof_fnames, tuple(member.vocabulary), member.oof,
                      extra={"fold": [member.folds[f] for f in member.oof_fnames]})
    write_predictions(folder / "submission.csv", member.test_fnames, tuple(member.vocabulary), member.test)
    y, y_test = _truth(member, member.oof_fnames, member.test_fnames)
    row = {"blend": "single", "nested_oof_lwlrap": lwlrap(y, member.oof),
           "test_lwlrap": None if y_test is None else lwlrap(y_test, member.test)}
    return {"members": [str(member.run.dir)], "kept": [member.name], "blends": [row], "chosen": "single",
            "submission": str(folder / "submission.csv")}


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
    body = {"recipe": recipe.source, "changes": recipe.changes, "forced": recipe.forced, **(extra or {}),
            "stages": stages}
    fsutil.write_text(path, json.dumps(body, indent=2, default=str))


def _markdown(results: dict[str, dict], final: str) -> str:
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
