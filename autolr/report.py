"""What the end of each invocation leaves on MLflow: the study's plots and description on the parent
run, each new trial run's curves.

Everything is drawn from stored data: trial rows (plain dicts the study module reads from the Optuna
storage, see :mod:`autolr.plots`) and the MLflow metric histories read back through the
:class:`~autolr.tracking.Tracker`. Plots are written to a temporary folder and logged under ``plots/``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolr import keys, plots, stability

__all__ = [
    "STUDY_PLOTS",
    "TOP_K",
    "StudyRecord",
    "best_tags",
    "draw_study_plots",
    "history",
    "loop_warnings",
    "metric_key",
    "record_trial_curves",
    "step_back_scale",
    "study_record",
    "top_trials",
]

logger = logging.getLogger(__name__)

TOP_K = 5
PLOTS_DIR = "plots"
STUDY_PLOTS = (
    "optimization_history.png",
    "param_importances.png",
    "stability_frontier.png",
    "top_learning_curves.png",
    "top_lr_curves.png",
)
TRIAL_PLOT = "curves.png"


def metric_key(metric: str) -> str:
    """The logged name of the objective metric (``accuracy`` is logged as ``val_accuracy``)."""
    return keys.val_metric(metric)


def top_trials(rows: Sequence[Mapping[str, Any]], direction: str, k: int = TOP_K) -> list[Mapping[str, Any]]:
    """The ``k`` best COMPLETE trials, best first."""
    done = [r for r in rows if r["state"] == "COMPLETE" and isinstance(r.get("value"), (int, float)) and math.isfinite(r["value"])]
    return sorted(done, key=lambda r: r["value"], reverse=direction == "maximize")[:k]


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """What a parent run records of its study at the end, from the stored trials: the study's own
    curves as metrics (``study/objective``, ``study/best_so_far``; step = trial number) and its
    description (markdown)."""

    series: dict[str, list[tuple[int, float]]]
    description: str | None  # None: none could be written (the run keeps the one it started with)


def study_record(
    rows: Sequence[Mapping[str, Any]],
    *,
    study: str,
    metric: str,
    direction: str,
    summary: str = "",
    range_tests: Mapping[str, float] | None = None,
    export: Mapping[str, Any] | None = None,
) -> StudyRecord:
    """The parent run's record of the study, from the stored trials, so every invocation (and every
    ``--jobs`` worker's trial) counts. Quick: no plot is drawn (:func:`draw_study_plots` does that, in
    :mod:`autolr.plot_job`). ``range_tests``: optimizer -> the cached range test's ``max_stable_lr``
    (:mod:`autolr.stability`); ``export``: what ``autolr export`` names (:func:`autolr.export.best_export`)."""
    limits = stability.study_limits(rows, range_tests)
    text = describe(rows, study=study, metric=metric, direction=direction, summary=summary, limits=limits, export=export)
    return StudyRecord(history(rows, direction), text)


def draw_study_plots(
    tracker,
    parent_run_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    direction: str,
    importances: Mapping[str, float],
    importance_note: str = "",
    range_tests: Mapping[str, float] | None = None,
) -> list[str]:
    """The five study plots on the parent run; returns their file names."""
    study_limits = stability.study_limits(rows, range_tests)
    top = top_trials(rows, direction)
    key = metric_key(metric)
    runs = tracker.trial_runs()
    curves, lrs = {}, {}
    for r in top:
        run_id = runs.get(r["trial"])
        if run_id is None:
            continue
        label = _label(r)
        curves[label] = {name: tracker.metric_history(run_id, name) for name in ("train_loss", key)}
        lrs[label] = tracker.metric_history(run_id, "lr")
    with tempfile.TemporaryDirectory(prefix="autolr-plots-") as tmp:
        folder = Path(tmp)
        plots.optimization_history(rows, metric=metric, direction=direction, path=folder / STUDY_PLOTS[0])
        plots.param_importances(importances, path=folder / STUDY_PLOTS[1], note=importance_note)
        plots.stability_frontier(rows, metric=metric, direction=direction, path=folder / STUDY_PLOTS[2], limits=study_limits)
        plots.learning_curves(curves, metric=key, path=folder / STUDY_PLOTS[3])
        plots.lr_curves(lrs, path=folder / STUDY_PLOTS[4])
        tracker.log_artifacts(parent_run_id, folder, PLOTS_DIR)
    return list(STUDY_PLOTS)


CURVE_TRIALS = 5  # trial runs that get curves.png: drawing one costs ~0.25 s, and MLflow charts every run's metrics itself


def record_trial_curves(tracker, parent_run_id: str, *, metric: str, ranking: Mapping[int, float] | None = None, top: int = CURVE_TRIALS) -> int:
    """The ``top`` trial runs of this invocation (best first by ``ranking``, trial number -> value
    with lower better; all of them without a ranking) get ``plots/curves.png``; returns how many did."""
    key = metric_key(metric)
    done = 0
    runs = tracker.trial_runs(parent_run_id)
    if ranking is not None:
        runs = dict(sorted(runs.items(), key=lambda item: (ranking.get(item[0], math.inf), item[0]))[:top])
    with tempfile.TemporaryDirectory(prefix="autolr-plots-") as tmp:
        for number, run_id in sorted(runs.items()):
            series = {name: tracker.metric_history(run_id, name) for name in ("train_loss", "lr", "grad_norm", key)}
            tags = tracker.run_tags(run_id)
            flags = {kind: int(tags[keys.gradient_flag(kind)[1]]) for kind in ("exploding", "vanishing") if keys.gradient_flag(kind)[1] in tags}
            title = f"trial {number}: {tags.get(keys.STATE, '?')}"
            if tags.get(keys.PRUNE_REASON):
                title += f" ({tags[keys.PRUNE_REASON]})"
            path = plots.trial_curves(series, title=title, metric=key, path=Path(tmp) / str(number) / TRIAL_PLOT, flags=flags)
            tracker.log_artifact(run_id, path, PLOTS_DIR)
            done += 1
    return done


def history(rows: Sequence[Mapping[str, Any]], direction: str) -> dict[str, list[tuple[int, float]]]:
    """Each COMPLETE trial's objective and the best so far, as ``(trial number, value)`` points."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE" and _finite(r.get("value"))), key=lambda r: r["trial"])
    pick = min if direction == "minimize" else max
    best, points, bests = None, [], []
    for r in done:
        best = r["value"] if best is None else pick(best, r["value"])
        points.append((r["trial"], float(r["value"])))
        bests.append((r["trial"], float(best)))
    return {keys.STUDY_OBJECTIVE: points, keys.STUDY_BEST_SO_FAR: bests}


def describe(
    rows: Sequence[Mapping[str, Any]],
    *,
    study: str,
    metric: str,
    direction: str,
    summary: str = "",
    limits: Mapping[str, stability.Limit] | None = None,
    export: Mapping[str, Any] | None = None,
) -> str:
    """The parent run's description (markdown): counts, the best single-seed trial and what the
    export names (the confirmation's winner, which may be another trial or a step back at a lower
    rate), the stability limit per optimizer and what it rests on, the plots. ``limits`` default:
    from the trials alone."""
    states = [r["state"] for r in rows]
    diverged = sum(1 for r in rows if r.get("diverged"))
    lines = [
        f"**autolr study `{study}`** {summary}".rstrip(),
        "",
        f"Trials in the study: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned ({diverged} diverged), {states.count('FAIL')} failed.",
    ]
    top = top_trials(rows, direction, 1)
    if top:
        lines.append(f"Best single seed: trial {top[0]['trial']}, {metric} = {top[0]['value']:.6g} ({_label(top[0])}).")
    if export is not None:
        lines.append(_exported(export, metric))
    for name, limit in (stability.study_limits(rows) if limits is None else limits).items():
        lines.append(f"Max stable lr ({name}): {limit.lr:.4g}. From {limit.source}.")
    lines.append("Plots in `plots/`: " + ", ".join(f"`{p}`" for p in STUDY_PLOTS) + "; the best trial runs of each invocation have `plots/curves.png`.")
    return "\n".join(lines)


def _exported(export: Mapping[str, Any], metric: str) -> str:
    """The line naming what ``best_config.yaml`` holds: the confirmed winner with its mean and spread
    on fresh seeds, or the single-seed best while the confirmation is off or not over."""
    params, confirmed = export["params"], export.get("confirmed")
    lr = params.get("lr")
    what = f"{params.get('optimizer')} {params.get('schedule')}" + (f" lr={lr:.3g}" if isinstance(lr, float) else "")
    if not confirmed:
        return f"Exported (`best_config.yaml`): trial {export['trial']} ({what}), its single-seed value; confirmation {export.get('confirmation')}."
    scale = step_back_scale(export)
    at = f" at {scale:.3g}x its lr" if scale != 1.0 else ""
    spread = f" +- {confirmed['std']:.2g}" if confirmed.get("std") is not None else ""
    return (f"Exported (`best_config.yaml`): trial {export['trial']}{at} ({what}), {metric} = {confirmed['mean']:.6g}{spread}, "
            f"the mean over {len(confirmed['values'])} fresh seeds (runs tagged `autolr.role = confirm`).")  # fmt: skip


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _label(row: Mapping[str, Any]) -> str:
    lr = row.get("lr")
    return f"#{row['trial']} {row.get('optimizer')} {row.get('schedule')} lr={lr:.3g}" if isinstance(lr, float) else f"#{row['trial']}"


def best_tags(export: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parent run's tags for what the export names: its trial and value, and where the export is
    that trial's step back, the factor of its lr (so ``best.lr`` is not read as the trial's own rate)."""
    if export is None:
        return {}
    scale = step_back_scale(export)
    return {keys.BEST_TRIAL: export["trial"], keys.BEST_VALUE: export["value"], **({keys.BEST_LR_SCALE: f"{scale:g}"} if scale != 1.0 else {})}


def step_back_scale(export: Mapping[str, Any] | None) -> float:
    """The factor of its trial's lr that an export trained at: below 1 for a step back, else 1."""
    return float(((export or {}).get("confirmed") or {}).get("lr_scale", 1.0))


def loop_warnings(trials: Sequence[Any]) -> list[str]:
    """What a study's loop got wrong (:data:`keys.LOOP_WARNINGS`), a line per kind: how many trials it
    concerns and the latest one's words, for the summary of ``tune`` and ``show``."""
    said: dict[str, list[str]] = {}
    for t in trials:
        for kind, why in (t.user_attrs.get(keys.LOOP_WARNINGS) or {}).items():
            said.setdefault(kind, []).append(why)
    complete = sum(t.state.name == "COMPLETE" for t in trials)  # the trials a loop is judged on: each ran to its end
    return [f"warning: {len(whys)} of {complete} complete trials: {whys[-1]}" for whys in said.values()]
