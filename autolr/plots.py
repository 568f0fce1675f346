"""Plots (PNG) of a study and of its trials, drawn from plain data.

matplotlib is imported inside the plotting functions only, and drawn with the Agg canvas on a bare
``Figure`` (no pyplot: no global backend switch, nothing to close). The callers gather the data, from the
Optuna storage and the MLflow histories; this module knows neither.

Data shapes:
- a trial row is a mapping with ``trial``, ``state`` (COMPLETE / PRUNED / FAIL / ...), ``value``,
  ``last_value`` (its last reported objective, for pruned trials), ``optimizer``, ``lr``, ``schedule``
  and ``diverged``;
- a series is ``(steps, values)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolr import stability

__all__ = [
    "compare_curves",
    "compare_histories",
    "compare_lr",
    "learning_curves",
    "lr_curves",
    "max_stable_lr",
    "optimization_history",
    "param_importances",
    "draw_range_test",
    "plot_range_test",
    "stability_frontier",
    "trial_curves",
]

Series = tuple[Sequence[float], Sequence[float]]
Row = Mapping[str, Any]

DPI = 100
WIDE = (10.0, 5.0)
SQUARE = (10.0, 7.5)


def max_stable_lr(rows: Sequence[Row]) -> float | None:
    """The highest learning rate among the trial rows that are stable (:mod:`autolr.stability`), or None."""
    return stability.max_stable_lr((r["lr"], stability.row_is_stable(r)) for r in rows if r.get("lr") is not None)


def trial_curves(series: Mapping[str, Series], *, title: str, metric: str, path: str | Path, flags: Mapping[str, int] | None = None) -> Path:
    """One trial: training loss, validation metric per epoch, learning rate, gradient norm (with the
    steps where gradients were flagged exploding or vanishing)."""
    fig, axes = _figure(2, 2, SQUARE, layout=None)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.9, hspace=0.35, wspace=0.22)  # fixed: constrained layout would double the cost
    panels = [("train_loss", "training loss", "step"), (metric, metric, "epoch"), ("lr", "learning rate", "step"), ("grad_norm", "gradient norm", "step")]
    for ax, (key, label, xlabel) in zip(axes.flat, panels):
        steps, values = _finite(*series.get(key, ((), ())))
        ax.plot(steps, values, lw=1.0, marker="o" if xlabel == "epoch" else None, ms=3)
        ax.set(title=label, xlabel=xlabel)
        ax.locator_params(axis="x", nbins=5)
        _log_if_wide(ax, values)
        if not steps:
            _note(ax, "no finite points")
    for kind, step in (flags or {}).items():
        axes[1, 1].axvline(step, color="tab:red" if kind == "exploding" else "tab:purple", ls="--", lw=1, label=f"{kind} at step {step}")
        axes[1, 1].legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def optimization_history(rows: Sequence[Row], *, metric: str, direction: str, path: str | Path) -> Path:
    """Objective per trial, the best so far as a step line; pruned trials at their last reported value."""
    fig, axes = _figure(1, 1, WIDE)
    ax = axes[0, 0]
    done = sorted((r for r in rows if r["state"] == "COMPLETE" and _is_finite(r.get("value"))), key=lambda r: r["trial"])
    pruned = [r for r in rows if r["state"] == "PRUNED" and _is_finite(r.get("last_value"))]
    ax.scatter([r["trial"] for r in pruned], [r["last_value"] for r in pruned], facecolors="none", edgecolors="0.6", label="pruned (last reported)")
    ax.scatter([r["trial"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete", zorder=3)
    if done:
        pick = min if direction == "minimize" else max
        best, xs, ys = None, [], []
        for r in done:
            best = r["value"] if best is None else pick(best, r["value"])
            xs.append(r["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
        ax.legend(fontsize="small")
    else:
        _note(ax, "no complete trial yet")
    _log_if_wide(ax, [r["value"] for r in done] + [r["last_value"] for r in pruned])
    ax.set(title=f"optimisation history ({direction} {metric})", xlabel="trial", ylabel=metric)
    return _save(fig, path)


def param_importances(importances: Mapping[str, float], *, path: str | Path, note: str = "") -> Path:
    """Horizontal bars, most important on top; a note instead when there is nothing to show."""
    fig, axes = _figure(1, 1, WIDE)
    ax = axes[0, 0]
    items = sorted(importances.items(), key=lambda kv: kv[1])
    if items:
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set(xlabel="importance (fANOVA, share of the objective's variance)")
    else:
        ax.set_axis_off()
        _note(ax, note or "no importances")
    ax.set_title("parameter importances")
    return _save(fig, path)


def stability_frontier(
    rows: Sequence[Row], *, metric: str, direction: str, path: str | Path, limits: Mapping[str, stability.Limit | None] | None = None
) -> Path:
    """Learning rate against the objective, one panel per optimizer, one colour per schedule: complete
    trials filled, curve-pruned hollow (last reported value), diverged as red crosses along the top, and
    the optimizer's stability limit (``limits``; default: from its stable trials) as a dashed line
    labelled with what it rests on."""
    with_lr = [r for r in rows if _is_finite(r.get("lr")) and r["state"] in ("COMPLETE", "PRUNED")]
    optimizers = sorted({str(r.get("optimizer")) for r in with_lr}) or ["-"]
    colours = _colours(sorted({str(r.get("schedule")) for r in with_lr}))
    fig, axes = _figure(1, len(optimizers), (max(7.0, 5.0 * len(optimizers) + 2.0), 5.0), sharey=True)
    for ax, name in zip(axes.flat, optimizers):
        mine = [r for r in with_lr if str(r.get("optimizer")) == name]
        _frontier_panel(ax, mine, colours, limits[name] if limits is not None and name in limits else stability.study_limit(mine))
        ax.set(title=f"optimizer {name}", xlabel="peak learning rate", ylabel=metric)
    _frontier_legend(axes[0, -1], colours)
    fig.suptitle(f"stability frontier ({direction} {metric})")
    return _save(fig, path)


def _frontier_panel(ax, rows: Sequence[Row], colours: Mapping[str, Any], limit: stability.Limit | None) -> None:
    values = []
    for r in rows:
        colour = colours[str(r.get("schedule"))]
        if r.get("diverged"):
            ax.scatter(r["lr"], 0.97, marker="x", color="tab:red", transform=ax.get_xaxis_transform(), zorder=4)
        elif r["state"] == "COMPLETE" and _is_finite(r.get("value")):
            ax.scatter(r["lr"], r["value"], color=colour, zorder=3)
            values.append(r["value"])
        elif _is_finite(r.get("last_value")):
            ax.scatter(r["lr"], r["last_value"], facecolors="none", edgecolors=colour, zorder=3)
            values.append(r["last_value"])
    if not rows:
        _note(ax, "no finished trial")
        return
    ax.set_xscale("log")
    lrs = [r["lr"] for r in rows if r["lr"] > 0]
    if lrs:  # the crosses along the top are not in the data limits: set the range from every trial
        ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
    _log_if_wide(ax, values)
    if limit is not None:
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, limit.lr / 1.5), max(high, limit.lr * 1.5))  # a range-test limit may lie beyond every trial
        ax.axvline(limit.lr, color="k", ls="--", lw=1)
        text = f"max stable lr {limit.lr:.4g} (from {limit.source})"
        ax.annotate(text, (limit.lr, 0.02), xycoords=("data", "axes fraction"), rotation=90, ha="right", va="bottom", fontsize="small")


def _frontier_legend(ax, colours: Mapping[str, Any]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"schedule {s}") for s, c in colours.items()]
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", label="complete"),
        Line2D([], [], ls="", marker="o", markerfacecolor="none", color="0.3", label="pruned (last reported)"),
        Line2D([], [], ls="", marker="x", color="tab:red", label="diverged"),
        Line2D([], [], ls="--", color="k", label="max stable lr"),
    ]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))


def learning_curves(curves: Mapping[str, Mapping[str, Series]], *, metric: str, path: str | Path) -> Path:
    """The top trials overlaid: training loss per step, validation metric per epoch. Keys of ``curves``
    are the trials' labels, best first."""
    fig, axes = _figure(1, 2, WIDE)
    for (key, title, xlabel), ax in zip((("train_loss", "training loss", "step"), (metric, metric, "epoch")), axes.flat):
        values = []
        for label, series in curves.items():
            steps, ys = _finite(*series.get(key, ((), ())))
            ax.plot(steps, ys, lw=1.0, label=label, marker="o" if xlabel == "epoch" else None, ms=3)
            values += ys
        ax.set(title=title, xlabel=xlabel)
        _log_if_wide(ax, values)
    if curves:
        axes[0, 1].legend(fontsize="small")
    else:
        _note(axes[0, 0], "no complete trial yet")
    fig.suptitle(f"learning curves of the top {len(curves)} trials")
    return _save(fig, path)


def lr_curves(curves: Mapping[str, Series], *, path: str | Path) -> Path:
    """The learning rate each top configuration used, step by step (warmup and decay as run)."""
    fig, axes = _figure(1, 1, WIDE)
    ax = axes[0, 0]
    for label, series in curves.items():
        ax.plot(*_finite(*series), lw=1.2, label=label)
    if curves:
        ax.legend(fontsize="small")
    else:
        _note(ax, "no complete trial yet")
    ax.set(title=f"learning-rate curves of the top {len(curves)} configurations", xlabel="step", ylabel="learning rate")
    return _save(fig, path)


def plot_range_test(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    suggestion: float,
    max_stable_lr: float,
    path: str | Path,
    probes: Sequence[Row] = (),
    bounds: tuple[float, float] | None = None,
    title: str = "LR range test",
) -> Path:
    """:func:`draw_range_test` on a figure of its own, saved to ``path``."""
    fig = draw_range_test(None, lrs, losses, suggestion=suggestion, max_stable_lr=max_stable_lr, probes=probes, bounds=bounds, title=title)
    return _save(fig, path)


def draw_range_test(
    ax,
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    suggestion: float,
    max_stable_lr: float,
    probes: Sequence[Row] = (),
    bounds: tuple[float, float] | None = None,
    title: str = "LR range test",
):
    """An LR range test on ``ax`` (a new figure when None): the probes' final loss against lr (log
    scale), its probes (``lr``, ``end_loss``, ``stable``) as dots, the suggestion and the stability limit
    as lines, the searched bounds shaded. Returns the ``Figure``."""
    if ax is None:
        _, axes = _figure(1, 1, WIDE)
        ax = axes[0, 0]
    ax.plot(*_finite(lrs, losses), lw=1.2, color="C0", label="probes: final loss at each constant rate")
    for stable, colour, label in ((True, "C2", "probe: stable"), (False, "C3", "probe: unstable")):
        dots = [(p["lr"], p["end_loss"]) for p in probes if bool(p["stable"]) is stable and _is_finite(p.get("end_loss"))]
        if dots:
            ax.scatter(*zip(*dots), color=colour, s=24, zorder=3, label=label)
    if bounds is not None:
        ax.axvspan(*bounds, color="0.85", zorder=0, label=f"searched lr {bounds[0]:.3g} .. {bounds[1]:.3g}")
    ax.axvline(suggestion, color="C1", lw=1.5, label=f"suggestion {suggestion:.3g}")
    ax.axvline(max_stable_lr, color="k", ls="--", lw=1.2, label=f"max stable lr {max_stable_lr:.3g}")
    ax.set_xscale("log")
    _log_if_wide(ax, losses)
    ax.set(title=title, xlabel="learning rate", ylabel="training loss")
    ax.legend(fontsize="small", loc="best")
    return ax.figure


# --- several studies (``autolr compare``): each study a mapping with ``label``, ``metric``, ``direction``,
# ``rows`` (trial rows) and ``limits`` (optimizer -> :class:`autolr.stability.Limit`) ---------------------


def compare_histories(studies: Sequence[Row], *, path: str | Path) -> Path:
    """The best objective so far against the trial number, one line per study (a panel per metric)."""
    metrics = sorted({s["metric"] for s in studies})
    fig, axes = _figure(1, len(metrics), (max(7.0, 6.0 * len(metrics)), 5.0))
    for ax, metric in zip(axes.flat, metrics):
        values = []
        for s in (s for s in studies if s["metric"] == metric):
            done = sorted((r for r in s["rows"] if r["state"] == "COMPLETE" and _is_finite(r.get("value"))), key=lambda r: r["trial"])
            pick, best, ys = (min if s["direction"] == "minimize" else max), None, []
            for r in done:
                best = r["value"] if best is None else pick(best, r["value"])
                ys.append(best)
            line = ax.step([r["trial"] for r in done], ys, where="post", label=s["label"])
            ax.scatter([r["trial"] for r in done], [r["value"] for r in done], s=10, alpha=0.4, color=line[0].get_color())
            values += [r["value"] for r in done]
        _log_if_wide(ax, values)
        ax.set(title=f"best {metric} so far", xlabel="trial", ylabel=metric)
        ax.legend(fontsize="small")
    fig.suptitle("optimisation histories")
    return _save(fig, path)


def compare_curves(curves: Mapping[str, Mapping[str, Series]], *, path: str | Path) -> Path:
    """The best trial of each study: training loss per step and each validation metric per epoch.
    Keys of ``curves`` are the studies' labels; each maps metric names to series."""
    names = ["train_loss", *sorted({n for c in curves.values() for n in c if n != "train_loss"})]
    fig, axes = _figure(1, len(names), (max(7.0, 5.0 * len(names)), 4.5))
    for ax, name in zip(axes.flat, names):
        values = []
        for label, series in curves.items():
            steps, ys = _finite(*series.get(name, ((), ())))
            ax.plot(steps, ys, lw=1.0, label=label, marker=None if name == "train_loss" else "o", ms=3)
            values += ys
        _log_if_wide(ax, values)
        ax.set(title=name, xlabel="step" if name == "train_loss" else "epoch")
    if curves:
        axes[0, 0].legend(fontsize="small")
    else:  # no legend to draw (matplotlib would warn "No artists with labels")
        _note(axes[0, 0], "no curves in the MLflow store")
    fig.suptitle("learning curves of each study's best trial")
    return _save(fig, path)


def compare_lr(studies: Sequence[Row], *, path: str | Path) -> Path:
    """Peak learning rate against the objective, a panel per study; each optimizer's stability limit
    as a dashed line (what it rests on in the legend)."""
    fig, axes = _figure(1, len(studies), (max(7.0, 5.0 * len(studies)), 4.5))
    for ax, s in zip(axes.flat, studies):
        rows = [r for r in s["rows"] if _is_finite(r.get("lr"))]
        for i, name in enumerate(sorted({str(r.get("optimizer")) for r in rows})):
            mine = [r for r in rows if str(r.get("optimizer")) == name]
            done = [r for r in mine if r["state"] == "COMPLETE" and _is_finite(r.get("value"))]
            ax.scatter([r["lr"] for r in done], [r["value"] for r in done], color=f"C{i}", s=14, label=name)
            limit = s["limits"].get(name)
            if limit is not None:
                ax.axvline(limit.lr, color=f"C{i}", ls="--", lw=1, label=f"{name} max stable lr {limit.lr:.3g} ({limit.source})")
        if rows:
            ax.set_xscale("log")
        ax.set(title=s["label"], xlabel="peak learning rate", ylabel=s["metric"])
        _log_if_wide(ax, [r["value"] for r in rows if r["state"] == "COMPLETE" and _is_finite(r.get("value"))])
        ax.legend(fontsize="x-small")
    fig.suptitle("learning rate against the objective")
    return _save(fig, path)


# --- helpers ---------------------------------------------------------------------------------------


def _figure(nrows: int, ncols: int, size: tuple[float, float], layout: str | None = "constrained", **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _finite(steps: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [(s, v) for s, v in zip(steps, values) if _is_finite(v)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _log_if_wide(ax, values: Sequence[float]) -> None:
    """Log scale when the values are positive and span more than two decades (losses usually do)."""
    finite = [v for v in values if _is_finite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")
        ax.minorticks_off()  # a log axis's minor ticks cost more to lay out than the rest of the panel


def _colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}
