"""Plots: valid PNGs of the promised size, for full, empty and degenerate data; the max stable lr."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from autolr import plots, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def row(trial, state, value=None, *, lr=0.01, optimizer="sgd", schedule="cosine", diverged=False, last_value=None):
    return {"trial": trial, "state": state, "value": value, "lr": lr, "optimizer": optimizer, "schedule": schedule,
            "diverged": diverged, "last_value": last_value}  # fmt: skip


ROWS = [
    row(0, "COMPLETE", 0.30, lr=0.01),
    row(1, "COMPLETE", 0.20, lr=0.05, schedule="constant"),
    row(2, "PRUNED", lr=0.08, last_value=0.9),
    row(3, "PRUNED", lr=3.0, diverged=True),
    row(4, "COMPLETE", 0.25, lr=1e-3, optimizer="adam"),
    row(5, "PRUNED", lr=0.5, optimizer="adam", diverged=True),
    row(6, "FAIL", lr=0.2),
]
CURVE = (list(range(50)), [1.0 / (s + 1) for s in range(50)])


@pytest.mark.parametrize("rows", [ROWS, [], [row(0, "PRUNED", lr=1.0, diverged=True)]], ids=["study", "empty", "all-diverged"])
def test_study_plots_are_pngs_of_the_promised_size(tmp_path, rows) -> None:
    w, h = plots.WIDE
    paths = {
        plots.optimization_history(rows, metric="val_loss", direction="minimize", path=tmp_path / "a.png"): (w, h),
        plots.param_importances({"lr": 0.7, "schedule": 0.3} if rows else {}, path=tmp_path / "b.png", note="none"): (w, h),
        plots.learning_curves({"#0": {"train_loss": CURVE, "val_loss": ([1, 2], [0.5, 0.4])}} if rows else {}, metric="val_loss", path=tmp_path / "c.png"): (w, h),
        plots.lr_curves({"#0": CURVE} if rows else {}, path=tmp_path / "d.png"): (w, h),
    }  # fmt: skip
    for path, (w_in, h_in) in paths.items():
        assert png_size(path) == (int(w_in * plots.DPI), int(h_in * plots.DPI))
    frontier = plots.stability_frontier(rows, metric="val_loss", direction="minimize", path=tmp_path / "e.png")
    width, height = png_size(frontier)
    assert height == 5 * plots.DPI and width >= 7 * plots.DPI


def test_trial_curves_survive_non_finite_and_missing_series(tmp_path) -> None:
    series = {"train_loss": ([0, 1, 2], [2.0, math.inf, math.nan]), "lr": CURVE}
    path = plots.trial_curves(series, title="trial 3: PRUNED", metric="val_loss", path=tmp_path / "t" / "curves.png", flags={"exploding": 1})
    assert png_size(path) == (int(plots.SQUARE[0] * plots.DPI), int(plots.SQUARE[1] * plots.DPI))


def test_max_stable_lr_is_the_highest_lr_that_did_not_diverge() -> None:
    assert plots.max_stable_lr(ROWS) == 0.08  # the curve-pruned trial counts; FAIL and diverged do not
    assert plots.max_stable_lr([r for r in ROWS if r["optimizer"] == "adam"]) == 1e-3
    assert plots.max_stable_lr([row(0, "PRUNED", lr=1.0, diverged=True)]) is None
    assert plots.max_stable_lr([]) is None
    # one that got worse without tripping the guard (its training loss ended above where it began)
    worse = [row(0, "PRUNED", lr=0.5, diverged=False), row(1, "COMPLETE", lr=0.1, diverged=False)]
    worse[0]["loss_ratio"], worse[1]["loss_ratio"] = 4.0, 0.05
    assert plots.max_stable_lr(worse) == 0.1


def test_top_trials_follow_the_direction() -> None:
    assert [r["trial"] for r in report.top_trials(ROWS, "minimize")] == [1, 4, 0]
    assert [r["trial"] for r in report.top_trials(ROWS, "maximize", k=1)] == [0]


def test_description_summarises_the_study() -> None:
    text = report.describe(ROWS, study="demo", metric="val_loss", direction="minimize", summary="(digits_mlp)")
    assert text.startswith("**autolr study `demo`** (digits_mlp)")
    assert "3 complete, 3 pruned (2 diverged), 1 failed" in text
    assert "Best single seed: trial 1, val_loss = 0.2" in text and "Exported" not in text
    assert "Max stable lr (adam): 0.001." in text and "Max stable lr (sgd): 0.08." in text


def test_description_names_what_the_export_holds() -> None:
    """The confirmation's winner may be a step back of another trial than the single-seed best: the
    description says which, at what rate, with its mean on fresh seeds (as the best.* params and
    the autolr.best_value tag beside it hold)."""
    params = {"optimizer": "sgd", "lr": 0.035, "schedule": "cosine"}
    confirmed = {"trial": 0, "seeds": [1000, 2000, 3000], "values": [0.21, 0.25, 0.23], "mean": 0.23, "std": 0.02, "lr_scale": 0.7}
    export = {"trial": 0, "params": params, "confirmed": confirmed, "confirmation": "complete"}
    text = report.describe(ROWS, study="demo", metric="val_loss", direction="minimize", export=export)
    assert "Best single seed: trial 1, val_loss = 0.2 " in text
    assert "Exported (`best_config.yaml`): trial 0 at 0.7x its lr (sgd cosine lr=0.035), val_loss = 0.23 +- 0.02, the mean over 3 fresh seeds" in text
    pending = {"trial": 1, "params": params | {"lr": 0.05}, "confirmed": None, "confirmation": "pending"}
    text = report.describe(ROWS, study="demo", metric="val_loss", direction="minimize", export=pending)
    assert "Exported (`best_config.yaml`): trial 1 (sgd cosine lr=0.05), its single-seed value; confirmation pending." in text


def test_metric_key_is_the_logged_name() -> None:
    assert report.metric_key("accuracy") == "val_accuracy"
    assert report.metric_key("val_loss") == "val_loss"


def test_importing_plots_does_not_import_matplotlib() -> None:
    code = "import sys, autolr.plots, autolr.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"
