"""autolr: find the learning rate a network should train with, together with its decay schedule.

Public API::

    autolr.tune("studies/quickstart.yaml", trials=20)       # run or resume a study
    autolr.find_lr("studies/quickstart.yaml")               # LR range test of a study
    autolr.range_test(model, optimizer, loader)             # ... or of your own model
    autolr.export_best("studies/quickstart.yaml", path="best.yaml")
    best = autolr.load_best("best.yaml")                    # in your own script
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps)
    autolr.tune("study.yaml", loop=train)                  # your own loop: train(trial: autolr.Trial)
    autolr.compare(["a.yaml", "b.yaml"], plots_dir="cmp")  # best configurations side by side, overlays

Every name loads on first use (PEP 562): ``import autolr`` imports neither torch, optuna nor mlflow,
so a process that needs one subpackage (the MLflow writer needs ``autolr.tracking`` only) starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autolr._lazy import lazy_names

__all__ = [
    "BestConfig",
    "CompareResult",
    "InputError",
    "StudyConfig",
    "StudyFileError",
    "Task",
    "TrackingUnavailableError",
    "Trial",
    "TrialPruned",
    "TuneResult",
    "compare",
    "export_best",
    "find_lr",
    "load_best",
    "load_study",
    "range_test",
    "study_results",
    "tune",
]

__version__ = "0.1.0"

_LAZY = {
    "StudyConfig": "autolr.config",
    "load_study": "autolr.config",
    "InputError": "autolr.errors",
    "StudyFileError": "autolr.errors",
    "TrackingUnavailableError": "autolr.errors",
    "Task": "autolr.tasks",
    "tune": "autolr.study",
    "study_results": "autolr.result",
    "export_best": "autolr.study",
    "TuneResult": "autolr.result",
    "load_best": "autolr.export",
    "BestConfig": "autolr.export",
    "find_lr": "autolr.autobounds",
    "Trial": "autolr.trial",
    "TrialPruned": "autolr.trial",
    "range_test": "autolr.finder",
    "compare": "autolr.compare",
    "CompareResult": "autolr.compare",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from autolr.autobounds import find_lr
    from autolr.compare import CompareResult, compare
    from autolr.config import StudyConfig, load_study
    from autolr.errors import InputError, StudyFileError, TrackingUnavailableError
    from autolr.export import BestConfig, load_best
    from autolr.finder import range_test
    from autolr.result import TuneResult, study_results
    from autolr.study import export_best, tune
    from autolr.tasks import Task
    from autolr.trial import Trial, TrialPruned


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
