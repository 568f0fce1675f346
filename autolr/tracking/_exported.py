"""Which MLflow runs trained what the export names: the tag ``autolr.exported = true`` on them and on no
other run of the study's experiment, so the trials view shows the winner in a column of its own (its
top row is the best single-seed run, which the confirmation may have passed over)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autolr import keys

__all__ = ["mark_exported"]


def mark_exported(client: Any, experiment_id: str, trial: int | None, lr_scale: float = 1.0, *, study_uid: str | None = None) -> None:
    """Tag search trial ``trial``'s run and its confirmation runs that completed, or for a step back
    (``lr_scale`` below 1) its confirmation runs at that rate; take the tag off the runs an earlier
    export named (a resumed study can export another configuration). ``trial`` None: the export names
    nothing yet. ``study_uid``: only this study's runs (one study name in two storages shares the
    experiment; a run without the tag, of an older autolr, counts as this study's)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{keys.EXPORTED}` = 'true'")
    if trial is not None:
        for key in (keys.TRIAL, keys.CONFIRM_OF):
            runs += client.search_runs([experiment_id], filter_string=f"tags.`{key}` = '{trial}'")
    runs = [r for r in runs if not study_uid or r.data.tags.get(keys.STUDY_UID, study_uid) == study_uid]
    for run in {r.info.run_id: r for r in runs}.values():
        named, tagged = _names(run.data.tags, trial, lr_scale), keys.EXPORTED in run.data.tags
        if named and not tagged:
            client.set_tag(run.info.run_id, keys.EXPORTED, "true")
        elif tagged and not named:
            client.delete_tag(run.info.run_id, keys.EXPORTED)


def _names(tags: Mapping[str, str], trial: int | None, lr_scale: float) -> bool:
    """Whether a run with ``tags`` trained the configuration that an export of ``trial`` at ``lr_scale`` names."""
    if trial is None or tags.get(keys.STATE) != "COMPLETE":  # a killed or failed run trained nothing to export
        return False
    if tags.get(keys.ROLE) == keys.ROLE_CONFIRM:
        return tags.get(keys.CONFIRM_OF) == str(trial) and math.isclose(float(tags.get(keys.LR_SCALE, 1.0)), lr_scale, rel_tol=1e-6)
    return tags.get(keys.ROLE) == keys.ROLE_TRIAL and tags.get(keys.TRIAL) == str(trial) and lr_scale == 1.0
