"""Pipeline recipes: stages as YAML data, parsed and checked before anything runs.

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
        budget_minutes: 60    # optional: inference budget for 3,361 test clips (see ensemble/budget.py)
      - name: test_pl
        pseudo_labels: blend  # pseudo-labelling the test set with an earlier stage's test predictions
      - name: final
        ensemble: [baseline, pseudo, cqt, test_pl]

A stage that sets its own ``seed`` keeps the other stages' folds (its ``train.fold_seed`` is
pinned unless it sets one), since blends and stacks pair clips out of fold. ``--set seed=N``
moves every stage's seed by the same amount, so such a stage stays apart from the others.

:mod:`audiotag.recipes.pipeline` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_from_dict, merge_dicts, parse_override, read_yaml
from ..errors import AudiotagError, ConfigError
from .ablation import VARIANTS

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
    # on this machine); TTA views and members are cut (ensemble/budget.py) until the blend fits.
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
            out = merge_dicts(out, {key: _nested(value, where)})
        else:
            out = merge_dicts(out, parse_override(f"{key}={json.dumps(value)}"))
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
        changes = merge_dicts(changes, _nested(raw.get("set") or {}, where))
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
    recipe = parse_recipe(read_yaml(path), source=str(path))
    for text in overrides:
        recipe.forced = merge_dicts(recipe.forced, parse_override(text))
    return recipe


def with_budget(recipe: Recipe, minutes: float) -> Recipe:
    """The recipe with an inference budget of ``minutes`` on every ensemble stage."""
    if not minutes > 0:
        raise ConfigError(f"an inference budget (--budget-minutes) is a positive number of minutes, not {minutes:g}",
                          hint="FAT2019's kernels had 60 minutes for 3,361 test clips: --budget-minutes 60")
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


# Settings a recipe fills with paths to another stage's outputs inside OUT. A fingerprint names the
# stage instead (whose own fingerprint is among the inputs), so a moved or copied OUT is reused.
STAGE_PATHS = ("teacher", "test_predictions")


def portable_settings(settings: dict, stage: Stage) -> dict:
    named = {"teacher": stage.teacher, "test_predictions": stage.pseudo_labels}
    return {**settings, "noisy": {**settings["noisy"],
                                  **{k: f"stage {named[k]}" for k in STAGE_PATHS if named[k]}}}


def stage_config(recipe: Recipe, stage: Stage, *, base: Config, out: Path) -> Config:
    common = merge_dicts(base.to_dict(), recipe.changes)
    data = merge_dicts(merge_dicts(common, stage.changes), recipe.forced)
    shared = merge_dicts(common, recipe.forced)  # what every stage gets unless it says otherwise
    own, moved = stage.changes.get("seed"), recipe.forced.get("seed")
    if all(type(v) is int for v in (own, moved, common["seed"])):  # a bad value is validation's to report
        # --set seed=N moves the whole recipe: a stage of its own seed stays as far from the others'
        data["seed"] = own - common["seed"] + moved
        if data["seed"] < 0:
            raise ConfigError(f"stage {stage.name}: its seed {own} lies {common['seed'] - own} below the recipe's; "
                              f"moved with --set seed={moved} it would be negative",
                              hint=f"give --set seed={common['seed'] - own} or more")
    if data["seed"] != shared["seed"] and data["train"]["fold_seed"] is None:
        # stages are blended clip by clip, so a stage of its own seed keeps the others' folds
        folds = shared["train"]["fold_seed"]
        data = merge_dicts(data, {"train": {"fold_seed": shared["seed"] if folds is None else folds}})
    if stage.teacher:
        data = merge_dicts(data, {"noisy": {"teacher": str((out / stage.teacher).resolve())}})
    if stage.pseudo_labels:
        source = next(s for s in recipe.stages if s.name == stage.pseudo_labels)
        predictions = out / source.name / ("submission.csv" if source.ensemble is not None else "test_predictions.csv")
        data = merge_dicts(data, {"noisy": {"test_predictions": str(predictions.resolve())}})
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"stage {stage.name}: {e.message}", hint=e.hint) from None
