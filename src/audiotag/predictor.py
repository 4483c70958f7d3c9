"""Using what was trained: a run, an ensemble of runs or a pipeline predicts new audio.

:func:`load_predictor` reads any of the three. A run predicts with its fold models; an ensemble
runs each member its fitted blend weighs, with the member's own features, windows and TTA views,
and applies the blend as it was fitted (weights or stacker, loaded from data, never pickled code);
a pipeline is its final stage. The same objects write Kaggle submissions for new test sets
(:func:`predict_submission`), tag files (:func:`tag_files`) and follow long recordings over time
(:meth:`Predictor.timeline`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import fsutil
from .audio.io import decode, read_file
from .data.layouts import audio_files_under
from .ensemble.members import run_fingerprint
from .ensemble.persist import load_blender
from .errors import AudioError, AudiotagError, DataError
from .inference.scorer import Decoded, RunScorer
from .inference.standardize import applies as standardize_applies, check_mode as check_standardize, standardize_labels
from .metrics import lwlrap
from .plots import plt, save_figure
from .runs import DataSpec, Run, write_predictions


class BlendScorer:
    """An ensemble folder's members and fitted blend; the same methods as :class:`RunScorer`."""

    def __init__(self, folder: Path, *, device: str = "auto", allow_missing_folds: bool = False):
        self.folder = Path(folder)
        summary = _read_json(folder / "ensemble.json")
        self.blender, names = load_blender(folder)
        records = summary.get("member_records")
        if records is None:
            raise DataError(f"{folder} was made before ensembles recorded their members for prediction",
                            hint="re-run `audiotag ensemble` or the pipeline's ensemble stage")
        if self.blender.settings["type"] == "weighted":  # members a blend gives no weight are not run at all
            weights = self.blender.arrays["weights"]
            names = [n for n, w in zip(names, weights) if w > 0]
            self.blender.arrays = {"weights": weights[weights > 0]}
        self.members: list[tuple[RunScorer, bool]] = []
        for name in names:
            record = records[name]
            run = _member_run(folder, name, record)
            scorer = RunScorer(run, device=device, views=record["views"], allow_missing_folds=allow_missing_folds)
            self.members.append((scorer, record["from_csv"]))
        self.labels = self.members[0][0].labels
        for scorer, _ in self.members[1:]:
            if scorer.labels != self.labels:
                raise DataError(f"{folder}: member {scorer.run.dir} has other labels than the first member")

    def _blend(self, outputs: list[np.ndarray]) -> np.ndarray:
        # members whose blended predictions were read from 6-decimal CSVs are rounded the same way
        X = np.stack([np.round(p.astype(np.float64), 6) if from_csv else p
                      for p, (_, from_csv) in zip(outputs, self.members)], axis=1)
        return self.blender.predict_proba(X)

    def clips(self, audio: list[Decoded]) -> np.ndarray:
        return self._blend([scorer.clips(audio) for scorer, _ in self.members])

    def windows(self, audio: Decoded, centres_s: np.ndarray) -> np.ndarray:
        return self._blend([scorer.windows(audio, centres_s) for scorer, _ in self.members])

    def window_seconds(self) -> float:
        return max(scorer.window_seconds() for scorer, _ in self.members)

    def test_split(self, ds, *, cache_dir=None, skip_bad=False, progress=True):
        results = [scorer.test_split(ds, cache_dir=cache_dir, skip_bad=skip_bad, progress=progress)
                   for scorer, _ in self.members]
        common = set.intersection(*({c.fname for c in good} for good, _, _ in results))
        good = [c for c in results[0][0] if c.fname in common]
        outputs = []
        for clips, probs, _ in results:
            row = {c.fname: i for i, c in enumerate(clips)}
            outputs.append(probs[[row[c.fname] for c in good]])
        return good, self._blend(outputs), sum(seconds for _, _, seconds in results)

    def prior(self) -> np.ndarray:
        return self._blend([scorer.prior()[None] for scorer, _ in self.members])[0]

    @property
    def n_models(self) -> int:
        return sum(scorer.n_models for scorer, _ in self.members)

    @property
    def tta_views(self) -> int | None:
        return None  # each member keeps the views its blend was fitted on


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__})", hint="re-run the stage that wrote it") from None


def _member_run(folder: Path, name: str, record: dict) -> Run:
    """The member's run folder: beside the ensemble as it was (a moved pipeline moves them together),
    else where it was; it must be the run the blend was fitted on."""
    for candidate in (folder / record["folder"], Path(record["absolute"])):
        if (candidate / "run.json").is_file():
            run = Run.open(candidate)
            break
    else:
        raise DataError(f"member {name} of the ensemble {folder} is missing (looked in {folder / record['folder']} "
                        f"and {record['absolute']})", hint="restore the member's run folder next to the ensemble")
    if not (run.dir / "oof_predictions.csv").is_file() or run_fingerprint(run) != record["fingerprint"]:
        raise DataError(f"member {name} ({run.dir}) changed since the ensemble {folder} was fitted",
                        hint="re-run the ensemble (or the pipeline) so the blend is fitted on the runs as they are")
    return run


@dataclass
class Timeline:
    """Scores of windows centred every ``hop_s`` over one recording, and the events they make."""

    scores: pd.DataFrame  # index: window centre (s); one column per label
    events: pd.DataFrame  # label, onset_s, offset_s, peak
    hop_s: float
    window_s: float

    def write(self, folder: str | Path, *, stem: str = "timeline") -> dict[str, Path]:
        """``stem_scores.csv``, ``stem_events.csv``, ``stem_events.json`` and ``stem.png`` in ``folder``."""
        folder = Path(folder)
        out = {"scores": folder / f"{stem}_scores.csv", "events": folder / f"{stem}_events.csv",
               "json": folder / f"{stem}_events.json", "plot": folder / f"{stem}.png"}
        fsutil.write_text(out["scores"], self.scores.to_csv(float_format="%.6f", index_label="time_s"))
        fsutil.write_text(out["events"], self.events.to_csv(index=False, float_format="%.3f"))
        fsutil.write_text(out["json"], json.dumps(self.events.to_dict(orient="records"), indent=2))
        self.plot(out["plot"])
        return out

    def plot(self, path: str | Path, *, top: int = 8) -> Path:
        """The ``top`` labels' scores over time, events shaded."""
        shown = list(self.scores.max().sort_values(ascending=False).index[:top])
        fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(shown)))
        image = ax.imshow(self.scores[shown].T.values, aspect="auto", cmap="magma", vmin=0, vmax=1,
                          extent=(0, self.scores.index[-1] + self.hop_s / 2, len(shown) - 0.5, -0.5))
        ax.set_yticks(range(len(shown)), shown, fontsize=8)
        for _, event in self.events.iterrows():
            if event["label"] in shown:
                row = shown.index(event["label"])
                ax.add_patch(plt.Rectangle((event["onset_s"], row - 0.45), event["offset_s"] - event["onset_s"], 0.9,
                                           fill=False, edgecolor="cyan", linewidth=1.2))
        ax.set_xlabel("time (s)")
        ax.set_title("Scores over time (boxes: events)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03)
        fig.tight_layout()
        return save_figure(fig, Path(path))


def events_from_scores(scores: pd.DataFrame, *, hop_s: float, threshold: float,
                       min_duration_s: float = 0.0) -> pd.DataFrame:
    """Runs of window centres scoring at least ``threshold``, per label: an event spans from half a
    hop before its first centre to half a hop after its last."""
    rows = []
    times = scores.index.to_numpy()
    for label in scores.columns:
        above = scores[label].to_numpy() >= threshold
        edges = np.flatnonzero(np.diff(np.r_[0, above.astype(int), 0]))
        for first, stop in zip(edges[::2], edges[1::2]):
            onset = max(0.0, times[first] - hop_s / 2)
            offset = times[stop - 1] + hop_s / 2
            if offset - onset >= min_duration_s:
                rows.append({"label": label, "onset_s": onset, "offset_s": offset,
                             "peak": float(scores[label].iloc[first:stop].max())})
    events = pd.DataFrame(rows, columns=["label", "onset_s", "offset_s", "peak"])
    return events.sort_values(["onset_s", "label"], kind="stable").reset_index(drop=True)


def check_timeline_options(hop_seconds: float, threshold: float, min_duration_seconds: float = 0.0) -> None:
    """Reject the timeline settings that would give no or wrong events, before any work or output."""
    if not (hop_seconds > 0 and np.isfinite(hop_seconds)):
        raise AudiotagError(f"hop_seconds (--hop-seconds) = {hop_seconds!r}: a positive number of seconds",
                            hint="e.g. 0.5: windows are scored every half second")
    if not 0 < threshold < 1:
        raise AudiotagError(f"threshold (--threshold) = {threshold!r}: a probability between 0 and 1",
                            hint="e.g. 0.5; lower finds more and fainter events")
    if not (min_duration_seconds >= 0 and np.isfinite(min_duration_seconds)):
        raise AudiotagError(f"min_duration_seconds (--min-duration) = {min_duration_seconds!r}: "
                            "zero or a positive number of seconds", hint="e.g. 1 keeps events of a second or longer")


class Predictor:
    """The front door: ``load_predictor(path).predict(files)`` for a run, ensemble or pipeline."""

    def __init__(self, scorer, *, source: Path, kind: str):
        self.scorer, self.source, self.kind = scorer, source, kind

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.scorer.labels)

    def predict(self, audio, *, sample_rate: int | None = None) -> pd.DataFrame:
        """Probabilities, one row per clip (its file name, or ``array_<i>``) and one column per label.

        ``audio``: a file, a folder (its audio files), a list of files, or a numpy array of samples
        (``(n,)`` or ``(n, channels)``; a list of them for several clips) with ``sample_rate``."""
        decoded = decode_inputs(audio, sample_rate=sample_rate)
        probs = self.scorer.clips(decoded)
        return pd.DataFrame(probs, index=pd.Index([d.name for d in decoded], name="fname"), columns=self.labels)

    def timeline(self, audio, *, sample_rate: int | None = None, hop_seconds: float = 0.5, threshold: float = 0.5,
                 min_duration_seconds: float = 0.0) -> Timeline:
        """Window scores every ``hop_seconds`` over one recording and the events above ``threshold``."""
        check_timeline_options(hop_seconds, threshold, min_duration_seconds)
        (one,) = decode_inputs(audio, sample_rate=sample_rate, single=True)
        duration = len(one.samples) / one.sample_rate
        centres = np.arange(hop_seconds / 2, max(duration, hop_seconds / 2 + 1e-9), hop_seconds)
        probs = self.scorer.windows(one, centres)
        scores = pd.DataFrame(probs, index=pd.Index(np.round(centres, 6), name="time_s"), columns=self.labels)
        events = events_from_scores(scores, hop_s=hop_seconds, threshold=threshold,
                                    min_duration_s=min_duration_seconds)
        return Timeline(scores, events, hop_seconds, self.scorer.window_seconds())


def audio_paths(items) -> list[Path]:
    """Files as given, and each folder's audio files (a folder without any is an error)."""
    paths = []
    for item in map(Path, items):
        found = audio_files_under(item) if item.is_dir() else [item]
        if item.is_dir() and not found:
            raise DataError(f"{item} holds no audio files", hint="pass audio files, or a folder that has some")
        paths += found
    return paths


def decode_inputs(audio, *, sample_rate: int | None = None, single: bool = False) -> list[Decoded]:
    if isinstance(audio, np.ndarray) or (isinstance(audio, (list, tuple)) and audio
                                         and isinstance(audio[0], np.ndarray)):
        arrays = [audio] if isinstance(audio, np.ndarray) else list(audio)
        if sample_rate is None or isinstance(sample_rate, bool) or not int(sample_rate) > 0:
            raise AudiotagError("samples given as an array need sample_rate=<Hz>")
        out = []
        for i, y in enumerate(arrays):
            y = np.asarray(y, dtype=np.float32)
            if y.ndim not in (1, 2) or y.size == 0 or not np.isfinite(y).all():
                raise AudioError("expected finite samples of shape (n,) or (n, channels)", code="bad-array",
                                 path=f"array_{i}")
            out.append(Decoded(f"array_{i}", y[:, None] if y.ndim == 1 else y, int(sample_rate)))
    else:
        out = []
        for path in audio_paths([audio] if isinstance(audio, (str, Path)) else list(audio)):
            y, sr, _ = decode(read_file(path, name=str(path)), name=str(path))
            out.append(Decoded(str(path), y, sr))
    if single and len(out) != 1:
        raise AudiotagError(f"a timeline follows one recording; {len(out)} were given")
    return out


def load_predictor(path: str | Path, *, device: str = "auto", allow_missing_folds: bool = False) -> Predictor:
    """The predictor of a run folder, an ensemble folder or a pipeline folder (its final stage)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder", hint="give a run, ensemble or pipeline folder")
    if (path / "pipeline.json").is_file():
        state = _read_json(path / "pipeline.json")
        final = state.get("final_stage")
        if not final or not (path / final).is_dir():
            raise DataError(f"{path}: the pipeline has not finished (no final stage recorded)",
                            hint=f"finish it: audiotag pipeline RECIPE --data DATA --out {path}")
        inner = load_predictor(path / final, device=device, allow_missing_folds=allow_missing_folds)
        return Predictor(inner.scorer, source=path, kind=f"pipeline ({inner.kind} {final})")
    if (path / "ensemble.json").is_file():
        return Predictor(BlendScorer(path, device=device, allow_missing_folds=allow_missing_folds),
                         source=path, kind="ensemble")
    if (path / "run.json").is_file():
        run = Run.open(path)
        return Predictor(RunScorer(run, device=device, allow_missing_folds=allow_missing_folds), source=path,
                         kind="run")
    raise DataError(f"{path} is not a run, ensemble or pipeline folder (no run.json, ensemble.json or pipeline.json)",
                    hint="give the folder that `audiotag train`, `audiotag ensemble` or `audiotag pipeline` wrote")


def predict_submission(path: str | Path, data: DataSpec, *, out: str | Path, cache_dir: str | Path | None = None,
                       tta_views: int | None = None, skip_bad: bool = False, progress: bool = True,
                       device: str = "auto", allow_missing_folds: bool = False, standardize: str = "auto") -> dict:
    """Write a Kaggle-format submission for the test clips of ``data`` with a run, an ensemble or a
    pipeline (on ``device``: auto takes a GPU when there is one, whatever trained it).

    ``standardize`` (auto | yes | no) standardises each label's scores over the whole test set
    (:mod:`audiotag.inference.standardize`); auto does when there are enough clips per label.

    ``data`` may hold only ``test/`` and ``sample_submission.csv``; its labels must be the model's,
    in the same order. With ``skip_bad``, an unusable test clip still gets a row (the training
    label frequencies, so the file stays complete) and is listed in the result. ``tta_views``
    overrides a run's TTA views (an ensemble's members keep the views their blend was fitted on).
    """
    if tta_views is not None and (isinstance(tta_views, bool) or not isinstance(tta_views, int) or tta_views < 0):
        raise AudiotagError(f"TTA views (--tta) = {tta_views!r}: a whole number of 0 or more",
                            hint="0 predicts the clean windows only")
    check_standardize(standardize)
    fsutil.check_writable(out)
    predictor = load_predictor(path, device=device, allow_missing_folds=allow_missing_folds)
    scorer = predictor.scorer
    if tta_views is not None:
        if not isinstance(scorer, RunScorer):
            raise AudiotagError("--tta applies to a single run; an ensemble's members keep the TTA views their "
                                "blend was fitted on")
        scorer = RunScorer(scorer.run, device=device, views=tta_views, allow_missing_folds=allow_missing_folds)
    ds = data.load()
    test = ds.split("test")
    if not test:
        raise DataError(f"{data.root or data.csv}: no test clips (expected sample_submission.csv or a test/ folder)")
    if tuple(ds.vocabulary) != predictor.labels:
        raise DataError("the dataset's labels differ from the model's (names or order)",
                        hint=f"it was trained on {len(predictor.labels)} labels starting "
                             f"{', '.join(predictor.labels[:3])}")
    good, probs, seconds_per_clip = scorer.test_split(ds, cache_dir=cache_dir, skip_bad=skip_bad, progress=progress)
    by_name = dict(zip((c.fname for c in good), probs))
    prior = scorer.prior()
    probs = np.stack([by_name.get(c.fname, prior) for c in test])
    standardized = standardize_applies(standardize, len(test), len(predictor.labels))
    rows = standardize_labels(probs) if standardized else probs
    write_predictions(Path(out), [c.fname for c in test], predictor.labels, rows)
    result = {"out": str(out), "clips": len(test), "kind": predictor.kind,
              "filled_with_prior": [c.fname for c in test if c.fname not in by_name],
              "models": scorer.n_models, "tta_views": scorer.tta_views, "seconds_per_clip": seconds_per_clip,
              "standardized": standardized}
    if ds.test_labelled and not result["filled_with_prior"]:
        result["lwlrap"] = lwlrap(ds.label_matrix(test), rows)
        result["lwlrap_probabilities"] = lwlrap(ds.label_matrix(test), probs)
    return result


def tag_files(path: str | Path, files: list[str | Path], *, top: int = 5, device: str = "auto",
              allow_missing_folds: bool = False) -> list[dict]:
    """The ``top`` labels of each audio file (a folder stands for the audio files under it) by a run,
    ensemble or pipeline: ``{"file", "tags"}``, or ``{"file", "error", "hint"}`` for a file that
    cannot be used, so one bad file does not stop the others."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AudiotagError(f"top (--top) = {top!r}: the number of labels to show is a whole number of 1 or more",
                            hint="e.g. --top 3")
    predictor = load_predictor(path, device=device, allow_missing_folds=allow_missing_folds)
    out = []
    for file in audio_paths(files):  # one at a time: a folder of long recordings is never all in memory
        try:
            y, sr, _ = decode(read_file(file, name=str(file)), name=str(file))
            p = predictor.scorer.clips([Decoded(str(file), y, sr)])[0]
        except AudioError as e:
            out.append({"file": str(file), "error": e.detail, "hint": e.hint or ""})
            continue
        best = np.argsort(-p, kind="stable")[:top]
        out.append({"file": str(file), "tags": [(predictor.labels[i], float(p[i])) for i in best]})
    return out
