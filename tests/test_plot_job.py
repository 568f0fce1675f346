"""The plot job: the study's plots are drawn after `tune` returns, in a process of their own; a job
that fails says so on the parent run and loses nothing (the next invocation draws them again)."""

from __future__ import annotations

import dataclasses
import json

from mlflow.tracking import MlflowClient

import autolr
from autolr import keys, plot_job
from autolr.report import STUDY_PLOTS

STUDY = """
    name: plots
    task: wine_mlp
    train: {epochs: 2, batch_size: 64}
    trials: 2
    seed: 0
    sampler: random
    confirm: false
    search:
      lr: {low: 1.0e-3, high: 1.0e-1}
      optimizer: {adam: {}}
      schedule: {constant: {}}
"""


def test_plots_arrive_after_tune_and_a_failed_job_is_tagged_on_the_parent(write_study, stores, plots) -> None:
    result = autolr.tune(write_study(STUDY), storage=stores["storage"], tracking_uri=stores["tracking_uri"], progress=False)
    client = MlflowClient(tracking_uri=stores["tracking_uri"])
    assert "autolr study `plots`" in client.get_run(result.parent_run_id).data.tags["mlflow.note.content"]  # written before tune returned
    assert result.wait_for_plots()
    assert {a.path for a in client.list_artifacts(result.parent_run_id, "plots")} == {f"plots/{name}" for name in STUDY_PLOTS}

    experiment = client.get_experiment(client.get_run(result.parent_run_id).info.experiment_id).name
    job = plot_job.PlotJob(stores["tracking_uri"], experiment, None, result.parent_run_id, stores["storage"], "no-such-study", "val_loss", "minimize")
    assert plot_job.main([json.dumps(dataclasses.asdict(job))]) == 1
    why = client.get_run(result.parent_run_id).data.tags[keys.PLOTS_ERROR]
    assert why.startswith("could not draw the plots (") and "next `autolr tune`" in why


def test_autolr_plots_0_starts_no_job_and_the_next_invocation_draws_them(write_study, stores, monkeypatch) -> None:
    """AUTOLR_PLOTS=0 (a CI run, this suite): the best configuration and the description are on the
    parent run, no plot job runs; the next invocation without it draws the plots."""
    monkeypatch.setenv("AUTOLR_PLOTS", "0")
    path = write_study(STUDY)
    result = autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"], progress=False)
    client = MlflowClient(tracking_uri=stores["tracking_uri"])
    assert not result.wait_for_plots(timeout_s=1)
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert not client.list_artifacts(result.parent_run_id, "plots")
    monkeypatch.setenv("AUTOLR_PLOTS", "1")
    again = autolr.tune(path, trials=3, storage=stores["storage"], tracking_uri=stores["tracking_uri"], progress=False)
    assert again.wait_for_plots()
    assert {a.path for a in client.list_artifacts(again.parent_run_id, "plots")} == {f"plots/{name}" for name in STUDY_PLOTS}
