"""Every reserved name autolr writes into a store, in one place (as MLflow's ``utils/mlflow_tags.py``).

Optuna user attrs, MLflow tags and the logged metric names cross processes and outlive the code that
wrote them: they are a schema. A name is defined here once and imported everywhere else; a new one
is added here first. This module imports nothing of autolr, so every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "BEST_LR_SCALE",
    "BEST_TRIAL",
    "BEST_VALUE",
    "CODE",
    "CONFIRM_OF",
    "CONFIRM_PLAN",
    "DIVERGED",
    "DIVERGENCE_STEP",
    "ERROR",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TRAINING",
    "EXPLODING",
    "EXPLODING_STEP",
    "EXPORTED",
    "GRADIENTS",
    "GRID_SEED",
    "HOST",
    "IDENTITY",
    "INVOCATIONS",
    "LAST_LOSS_RATIO",
    "LOSS_RATIO",
    "LOSS_WORDS",
    "LOOP_WARNINGS",
    "LOW_LOSS_RATIO",
    "LR_SCALE",
    "OPTIMIZER",
    "OWNER",
    "PARAMS",
    "PID",
    "PLOTS_ERROR",
    "PRUNE_REASON",
    "RANGE_TEST_CACHE",
    "RETRY_OF",
    "ROLE",
    "ROLE_CONFIRM",
    "ROLE_RANGE_TEST",
    "ROLE_STUDY",
    "ROLE_TRIAL",
    "RUN_UUID",
    "SCHEDULE_STEPS",
    "SCORE_WORDS",
    "SEED",
    "SOURCE",
    "STATE",
    "STEPS",
    "STORAGE",
    "STUDY",
    "STUDY_BEST_SO_FAR",
    "STUDY_OBJECTIVE",
    "STUDY_UID",
    "SWEEP",
    "TRIAL",
    "TRIALS_VIEW",
    "TRIALS_VIEW_TAG",
    "UID",
    "VALUE",
    "VANISHING",
    "VANISHING_STEP",
    "gradient_flag",
    "metric_name_in",
    "reads_like_a_score",
    "val_metric",
]

# --- Optuna trial user attrs (also mirrored as MLflow tags where a trial run exists) ----------------
PARAMS = "autolr.params"  # the flat configuration the trial trained (defaults included)
PRUNE_REASON = "autolr.prune_reason"  # "diverged: loss inf at step 37", "curve: ..."
DIVERGENCE_STEP = "autolr.divergence_step"
DIVERGED = "autolr.diverged"  # read by the sampler's ceiling
STEPS = "autolr.steps"  # optimisation steps the trial ran
SCHEDULE_STEPS = "autolr.schedule_steps"  # a loop's trial whose schedule spans other steps than it ran (trial.build_scheduler): the export's total_steps
LOSS_RATIO = "autolr.loss_ratio"  # smoothed training loss at the end / at the start: above 1, no progress
LOW_LOSS_RATIO = "autolr.low_loss_ratio"  # the lowest epoch mean of the training loss (plus its noise) / at the start
LAST_LOSS_RATIO = "autolr.last_loss_ratio"  # the last epoch's mean (less its noise) / at the start: with LOW_LOSS_RATIO, what a run gave back
ERROR = "autolr.error"  # "TypeError: ..." of a FAIL trial
LOOP_WARNINGS = "autolr.loop_warnings"  # a loop's trial: {"schedule"|"fault": what its loop got wrong}, repeated in the summary
PLOTS_ERROR = "autolr.plots_error"  # on a parent run whose plot job failed: why (the next invocation draws them)
SOURCE = "autolr.source"  # who proposed an enqueued trial ("range_test", "sweep")
CONFIRM_OF = "autolr.confirm_of"  # a confirmation run: the number of the search trial it re-trains
LR_SCALE = "autolr.lr_scale"  # a confirmation's step back: the factor (e.g. 0.7) on the confirmed winner's lr
SEED = "autolr.seed"  # the seed a run trained with: a confirmation run's fresh one, a search trial's (the study's, or its own with train.seed_per_trial)
OWNER = "autolr.owner"  # the process running the trial: {machine, pid, start} (autolr.owner)
RETRY_OF = "autolr.retry_of"  # a killed trial's configuration run again: the killed trial's number

# --- Optuna study user attrs ------------------------------------------------------------------------
UID = "autolr.uid"  # the study's own id, kept across invocations
RANGE_TEST_CACHE = "autolr.range_test.{optimizer}"  # one optimizer's cached range test
CODE = "autolr.code"  # {"key": "task" | "loop", "label": ...}: what trained the study (callables have no file key)
IDENTITY = "autolr.identity"  # {"fingerprint", "identity", "summary"}: what defines the study (autolr.identity)
INVOCATIONS = "autolr.invocations"  # slot -> owner record of the invocations running the study: each one's sampler seed mixes in its slot
GRID_SEED = "autolr.grid_seed"  # the seed a grid study's points were shuffled with at its start: every resume and worker keeps it
SWEEP = "autolr.sweep"  # {at, target, enqueued}: the schedule sweep (autolr.sweep) for that target, enqueued at trial `at`
CONFIRM_PLAN = "autolr.confirm_plan"  # {top, seeds, budget, step_back, steps, near, slack} of the last invocation that confirmed

# --- MLflow run tags ----------------------------------------------------------------------------------
ROLE = "autolr.role"
ROLE_STUDY = "study"  # the parent run of one invocation
ROLE_TRIAL = "trial"
ROLE_RANGE_TEST = "range_test"
ROLE_CONFIRM = "confirm"  # a search trial's configuration re-trained on a fresh seed
STUDY = "autolr.study"
STUDY_UID = "autolr.study_uid"  # = the study's UID attr: one study name in two storages never mixes runs
STORAGE = "autolr.storage"
HOST = "autolr.host"
PID = "autolr.pid"
TRIAL = "autolr.trial"
STATE = "autolr.state"  # COMPLETE / PRUNED / FAIL / KILLED / RUNNING
VALUE = "autolr.value"
OPTIMIZER = "autolr.optimizer"  # of a range-test run
BEST_TRIAL = "autolr.best_trial"
BEST_VALUE = "autolr.best_value"
EXPORTED = "autolr.exported"  # "true" on the runs that trained what the export names (the winner, or its step back), on no other run
RUN_UUID = "autolr.run_uuid"  # the id the training side drew for a run the store named otherwise (MLflow's public API): how a spool delivered twice finds the run it created
BEST_LR_SCALE = "autolr.best_lr_scale"  # the export is best_trial's configuration at this factor of its lr (a step back)
GRADIENTS = "autolr.gradients"  # "exploding" / "vanishing"
EXPLODING = "autolr.exploding"  # the reason, when the gradient norm exploded
EXPLODING_STEP = "autolr.exploding_step"
VANISHING = "autolr.vanishing"
VANISHING_STEP = "autolr.vanishing_step"

# --- MLflow names autolr sets but does not own ----------------------------------------------------
# The experiment tag MLflow 3's UI defines for an experiment's kind ("custom_model_development": the
# model-training view; "genai_development": the traces view). mlflow exports no constant for it.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# A view of the runs page stored as an experiment tag, as MLflow's own "share view" does: opened with
# ``#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=autolr-trials``.
TRIALS_VIEW = "autolr-trials"
TRIALS_VIEW_TAG = "mlflow.sharedViewState." + TRIALS_VIEW

# --- metrics of the parent run (the study itself; step = trial number) ------------------------------
# The prefix before "/" makes MLflow's UI chart them in a section of their own, "study".
STUDY_OBJECTIVE = "study/objective"  # each COMPLETE trial's objective value
STUDY_BEST_SO_FAR = "study/best_so_far"  # the best objective among trials 0..step


# --- per-layer statistics of a trial run (every ``tracking.layer_stats_every`` steps) ----------------
# "weight_" and "." rather than "grad_norm/": MLflow's UI charts each "prefix/" family in a section of its
# own placed before the run's plain metrics, and orders a section's charts by name, so these names put a
# trial's train_loss, lr, grad_norm and val_* charts first and the per-layer ones after them.
LAYER_GRAD_NORM = "weight_grad_norm."  # + parameter name: the layer's gradient norm
LAYER_WEIGHT_NORM = "weight_norm."  # the layer's weight norm
LAYER_UPDATE_RATIO = "weight_update_ratio."  # |update| / |weight| of the step


def gradient_flag(kind: str) -> tuple[str, str]:
    """The (reason, step) tag names of a gradient flag ``kind`` ("exploding" or "vanishing")."""
    names = {"exploding": (EXPLODING, EXPLODING_STEP), "vanishing": (VANISHING, VANISHING_STEP)}
    return names[kind]


def val_metric(name: str) -> str:
    """The logged name of a validation metric: ``accuracy`` -> ``val_accuracy``, ``loss`` -> ``val_loss``;
    ``val_loss`` stays."""
    return name if name.startswith("val_") else f"val_{name}"


SCORE_WORDS = frozenset({"acc", "accuracy", "auc", "auroc", "f1", "precision", "recall", "r2", "score", "iou", "dice", "map", "bleu", "top1", "top5"})


LOSS_WORDS = frozenset({"loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "cost", "distance"})


def reads_like_a_score(metric: str) -> bool:
    """A metric whose name holds a word of :data:`SCORE_WORDS`, with or without a number after it
    (``val_accuracy``, ``f1_macro``, ``acc1``, ``map50``, ``valAccuracy``), and none of
    :data:`LOSS_WORDS` (``val_dice_loss`` is a loss): one a study maximizes, where a loss is minimized."""
    words = [w.lower() for w in re.findall(r"[a-z]+\d*|[A-Z][a-z]*\d*|\d+", metric)]
    words += [w.rstrip("0123456789") for w in words]
    return bool(SCORE_WORDS.intersection(words)) and not LOSS_WORDS.intersection(words)


def metric_name_in(names: Iterable[str], metric: str) -> str | None:
    """The name under which ``metric`` (``val_loss``) appears among ``names``: as it is, or without its
    ``val_`` prefix (a loop may report ``loss``); None when it is not there."""
    names = set(names)
    return next((n for n in (metric, metric.removeprefix("val_")) if n in names), None)
