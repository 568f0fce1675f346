"""``RangeTestResult.plot``: the range test drawn on a matplotlib axes, returned as its ``Figure``.

Interim home: the drawing is :func:`autolr.plots.plot_range_test`'s, which draws on a figure of its own
and saves it to a file, so it cannot hand back a figure or draw on a caller's axes. Once
``autolr.plots`` has ``draw_range_test(ax, ...)`` (``plot_range_test`` then being figure + draw +
save), ``RangeTestResult.plot`` calls that and this module goes. matplotlib is imported only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autolr.finder._result import RangeTestResult

__all__ = ["draw_range_test"]


def draw_range_test(result: RangeTestResult, ax: Any = None, *, title: str = "LR range test") -> Any:
    """The probes' final loss against lr (log scale), stable and unstable probes as dots, the suggestion
    and the stability limit as vertical lines; returns the ``Figure`` that holds ``ax``."""
    from autolr import plots

    if ax is None:
        _, axes = plots._figure(1, 1, plots.WIDE)
        ax = axes[0, 0]
    ax.plot(result.lrs, result.losses, lw=1.2, color="C0", label="probes: final loss at each constant rate")  # finite points only
    for stable, colour, label in ((True, "C2", "probe: stable"), (False, "C3", "probe: unstable")):
        dots = [(p.lr, p.end_loss) for p in result.probes if p.stable is stable and plots._is_finite(p.end_loss)]
        if dots:
            ax.scatter(*zip(*dots), color=colour, s=24, zorder=3, label=label)
    ax.axvline(result.suggestion, color="C1", lw=1.5, label=f"suggestion {result.suggestion:.3g}")
    ax.axvline(result.max_stable_lr, color="k", ls="--", lw=1.2, label=f"max stable lr {result.max_stable_lr:.3g}")
    ax.set_xscale("log")
    plots._log_if_wide(ax, result.losses)
    ax.set(title=title, xlabel="learning rate", ylabel="training loss")
    ax.legend(fontsize="small", loc="best")
    return ax.figure
