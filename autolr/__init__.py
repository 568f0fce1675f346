"""autolr: find the learning rate a network should train with, together with its decay schedule.

Public API::

    autolr.tune("studies/quickstart.yaml", trials=20)       # run or resume a study
    autolr.find_lr("studies/quickstart.yaml")               # LR range test
    autolr.export_best("studies/quickstart.yaml", path="best.yaml")
    best = autolr.load_best("best.yaml")                    # in your own script
    optimizer = best.build_optimizer(model.parameters())
    scheduler = best.build_scheduler(optimizer, total_steps)
"""

from __future__ import annotations

from typing import Any

from autolr.config import StudyConfig, load_study
from autolr.errors import InputError, StudyFileError, TrackingUnavailableError
from autolr.tasks import Task

__all__ = [
    "BestConfig",
    "InputError",
    "StudyConfig",
    "StudyFileError",
    "Task",
    "TrackingUnavailableError",
    "TuneResult",
    "export_best",
    "find_lr",
    "load_best",
    "load_study",
    "study_results",
    "tune",
]

__version__ = "0.1.0"

# optuna and mlflow load only when a function that needs them is called: `import autolr` stays light.
_LAZY = {
    "tune": "autolr.study",
    "study_results": "autolr.study",
    "export_best": "autolr.study",
    "TuneResult": "autolr.study",
    "load_best": "autolr.export",
    "BestConfig": "autolr.export",
    "find_lr": "autolr.autobounds",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autolr' has no attribute {name!r}")
