"""A study's categorical choices in the order its trials stored them.

Optuna keeps a categorical parameter's choices, in their order, for the life of a study: a trial
that suggests ``schedule`` from other choices, or from the same ones in another order, fails with
"CategoricalDistribution does not support dynamic value space". So a study file whose schedules or
optimizers are listed in another order than when the study began, or one that adds a schedule or an
optimizer (``--extend-space``), failed every trial.

Here the stored choices decide: :func:`in_stored_order` lists a study file's choices in the order
the study's trials stored them, the file's new ones after them; :func:`widen` rewrites the stored
trials' distributions to those wider choices, in one transaction. A stored categorical value is an
index into its choices, and the stored choices stay their first indices, so no value changes.
(The alternative Optuna users are pointed to, copying every trial into a new study, is not atomic:
a kill between the copy and the swap would lose the study.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, distribution_to_json, json_to_distribution

from autolr.config import SearchSpace, StudyConfig
from autolr.params import Choice

__all__ = ["in_stored_order", "suggested", "widen"]

logger = logging.getLogger(__name__)


def suggested(search: SearchSpace) -> dict[str, tuple]:
    """The categorical parameters a search space suggests, by Optuna name, with their choices in the
    space's order (:func:`autolr.space.suggest_run`; a single optimizer or schedule is not suggested)."""
    out: dict[str, tuple] = {}
    for name, options in (("optimizer", search.optimizers), ("schedule", search.schedules)):
        if len(options) > 1:
            out[name] = tuple(options)
        for option, params in options.items():
            out.update({f"{option}.{p}": tuple(s.values) for p, s in params.items() if isinstance(s, Choice)})
    if isinstance(search.warmup, Choice):
        out["warmup"] = tuple(search.warmup.values)
    return out


def in_stored_order(config: StudyConfig, study: optuna.Study) -> StudyConfig:
    """``config`` with each categorical's choices in the order ``study`` stored them, the file's new
    ones after (a file whose choices do not contain the stored ones is left as it is: the study's
    identity refuses it to ``tune``, and reading suggests nothing)."""
    given = suggested(config.search)
    stored = _stored(study, given)
    order = {name: _ordered(stored[name], choices) for name, choices in given.items() if name in stored}
    order = {name: choices for name, choices in order.items() if choices is not None}
    if not order:
        return config
    search = config.search

    def params(prefix: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {p: Choice(order[f"{prefix}.{p}"]) if f"{prefix}.{p}" in order else s for p, s in settings.items()}

    optimizers = {name: params(name, search.optimizers[name]) for name in order.get("optimizer", search.optimizers)}
    schedules = {name: params(name, search.schedules[name]) for name in order.get("schedule", search.schedules)}
    warmup = Choice(order["warmup"]) if "warmup" in order else search.warmup
    return dataclasses.replace(config, search=dataclasses.replace(search, optimizers=optimizers, schedules=schedules, warmup=warmup))


def widen(study: optuna.Study, config: StudyConfig) -> list[str]:
    """Rewrite the distributions ``study``'s trials stored for each categorical that ``config`` widens
    (its choices contain the stored ones, and more) to the wider choices, the stored ones first; the
    names rewritten. A storage that is not a database Optuna's RDB storage reads is left as it is."""
    backend = _rdb(study)
    if backend is None:
        return []
    given = suggested(config.search)
    stored = _stored(study, given)
    wider = {name: choices for name in stored if (choices := _ordered(stored[name], given[name])) is not None and choices != stored[name]}
    if not wider:
        return []
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
    of_study = sa.select(trials.c.trial_id).where(trials.c.study_id == study._study_id)
    with backend.engine.begin() as conn:  # every name or none
        for name, choices in wider.items():
            conn.execute(
                params.update()
                .where(params.c.param_name == name, params.c.trial_id.in_(of_study))
                .values(distribution_json=distribution_to_json(CategoricalDistribution(choices)))
            )
    _forget_cached_trials(study)
    logger.info("study %r: stored choices of %s widened", study.study_name, ", ".join(sorted(wider)))
    return sorted(wider)


def _ordered(stored: tuple, given: tuple) -> tuple | None:
    """The stored choices, then the given ones they lack; None where the given ones lack a stored one."""
    if not set(stored) <= set(given):
        return None
    return tuple(stored) + tuple(c for c in given if c not in stored)


def _stored(study: optuna.Study, names: Mapping[str, tuple]) -> dict[str, tuple]:
    """The choices ``study``'s trials stored for each of ``names`` (Optuna holds one set per name)."""
    if not names:
        return {}
    backend = _rdb(study)
    if backend is not None:  # one DISTINCT query, not every trial built
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
        query = (
            sa.select(params.c.param_name, params.c.distribution_json)
            .distinct()
            .join(trials, trials.c.trial_id == params.c.trial_id)
            .where(trials.c.study_id == study._study_id, params.c.param_name.in_(list(names)))
        )
        with backend.engine.connect() as conn:
            rows = [(name, json_to_distribution(text)) for name, text in conn.execute(query)]
    else:
        rows = [(name, d) for t in study.get_trials(deepcopy=False) for name, d in t.distributions.items() if name in names]
    return {name: tuple(d.choices) for name, d in rows if isinstance(d, CategoricalDistribution)}


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDB storage behind ``study`` (Optuna puts a cache in front of one), or None for another kind."""
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _forget_cached_trials(study: optuna.Study) -> None:
    """The trials a cache in front of the storage (shared by an invocation's studies) holds of
    ``study`` are read again: they were read before their distributions were rewritten."""
    cache, sid = study._storage, study._study_id
    studies = getattr(cache, "_studies", None)
    if isinstance(studies, dict):  # as Optuna's own _CachedStorage.delete_study forgets a study
        with cache._lock:
            info = studies.pop(sid, None)
            for number in info.trials if info is not None else ():
                cache._trial_id_to_study_id_and_number.pop(cache._study_id_and_number_to_trial_id.pop((sid, number), None), None)
    study._thread_local.cached_all_trials = None
