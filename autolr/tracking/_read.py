"""Reading a study's trial curves back from an MLflow store that may not exist: nothing is created
(no database file, no experiment), so ``autolr compare`` can look without leaving a trace."""

from __future__ import annotations

from collections.abc import Sequence

from autolr import keys, sqlite
from autolr.tracking._store import open_client

__all__ = ["read_trial_curves", "trials_view_links"]

Series = tuple[list[int], list[float]]


def read_trial_curves(tracking_uri: str, experiment: str, trial: int, names: Sequence[str], *, study_uid: str | None = None) -> dict[str, Series]:
    """``name -> (steps, values)`` of trial ``trial``'s latest run in ``experiment`` (only runs tagged
    with ``study_uid`` when given); empty when the store, the experiment or the run is not there."""
    path = sqlite.sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        return {}
    client = open_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    query = f"tags.`{keys.ROLE}` = '{keys.ROLE_TRIAL}' and tags.`{keys.TRIAL}` = '{trial}'"
    if study_uid:
        query += f" and tags.`{keys.STUDY_UID}` = '{study_uid}'"
    runs = client.search_runs([exp.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        return {}
    curves = {}
    for name in names:
        points = sorted(client.get_metric_history(runs[0].info.run_id, name), key=lambda m: (m.step, m.timestamp))
        curves[name] = ([m.step for m in points], [m.value for m in points])
    return curves


def trials_view_links(tracking_uri: str) -> dict[str, str]:
    """Experiment name -> the path (after the UI's base URL) of its trials view, for each experiment
    autolr has given one; empty when the store is not there (nothing is created)."""
    path = sqlite.sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        return {}
    client = open_client(tracking_uri)
    return {
        e.name: f"/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={keys.TRIALS_VIEW}"
        for e in client.search_experiments(max_results=1000)
        if keys.TRIALS_VIEW_TAG in e.tags
    }
