"""Study files: read safely, validated once, turned into typed objects.

Every mistake a user can make in a study file raises :class:`autolr.errors.StudyFileError` with one
line that names the file, the key, what was expected and what was given. Nothing downstream sees a raw dict.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from autolr import _yaml, keys
from autolr._checker import TOP as _TOP
from autolr._checker import Checker as _Checker
from autolr.errors import StudyFileError
from autolr.params import FINDER_STEPS, LR, MAX_WARMUP, WARMUP, Choice, Fixed, ParamSpec, Range, Setting

__all__ = [
    "ConfirmConfig",
    "FinderConfig",
    "LrSearch",
    "PruningConfig",
    "SearchSpace",
    "StudyConfig",
    "TrainConfig",
    "load_study",
    "parse_study",
    "safe_name",
    "with_overrides",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # the embedded MLflow store, under the project
SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes")
UNSTEERED_SAMPLERS = ("grid", "random")  # no divergence ceiling: they propose what they propose
CURVE_PRUNERS = ("none", "median", "hyperband")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
# autolr.tasks.BUILTIN_TASKS by name, so that reading a study file imports no torch (a test keeps the two equal)
BUILTIN_TASK_NAMES = ("digits_mlp", "digits_cnn", "wine_mlp", "breast_cancer_mlp", "diabetes_mlp", "make_classification", "classification_mlp", "least_squares")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The budget and the mechanics of every trial (autolr's trainer; a ``loop:`` reads what it wants)."""

    epochs: int = 10
    batch_size: int = 64  # for Datasets; a task's own DataLoader keeps its own
    device: str = "auto"
    grad_clip: float | None = None
    precision: str = "fp32"  # bf16/fp16: autocast; fp16 with a gradient scaler (CUDA only)
    accumulate: int = 1  # micro-batches per optimizer step
    max_steps: int | None = None  # a step budget beside epochs: training stops at whichever comes first
    steps_per_epoch: int | None = None  # batches per epoch, for data without a length (iterable datasets)
    seed_per_trial: bool = False  # search trial n trains on its own seed (autolr.seeds.trial_seed), not the study's


@dataclasses.dataclass(frozen=True)
class LrSearch:
    """Log-uniform range of the peak learning rate, or ``auto`` (bounds from the LR range test)."""

    low: float | None = None
    high: float | None = None

    @property
    def auto(self) -> bool:
        return self.low is None


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    lr: LrSearch
    optimizers: Mapping[str, Mapping[str, Setting]]
    schedules: Mapping[str, Mapping[str, Setting]]
    warmup: Setting = Fixed(0.0)


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    divergence: bool = True
    curve: str = "median"
    loss_factor: float = 10.0  # a loss above this multiple of the first step's loss has diverged
    startup_trials: int = 5  # curve pruning starts after this many finished trials
    warmup_epochs: int | None = None  # and never before this many epochs of a trial (None, "auto": a fifth of them)

    def first_epoch(self, epochs: int) -> int:
        """The first epoch a trial of ``epochs`` epochs may be cut at: ``warmup_epochs``, by default a fifth of
        them (at least 1). Early on a high rate leads every curve: a median judged after one epoch of 15 cut the
        slow starters where the best rates were (``bench/efficiency.py``, digits wide: 1.14x of the grid's pick; a fifth, 1.08x)."""
        return self.warmup_epochs if isinstance(self.warmup_epochs, int) else max(1, math.ceil(epochs / 5))  # None or "auto"


@dataclasses.dataclass(frozen=True)
class FinderConfig:
    """The LR range test (``autolr find-lr``, ``search.lr: auto``): its budget in optimizer steps, shared
    by its constant-rate probes, and the range of rates it may try."""

    steps: int = 100
    start_lr: float = 1e-7
    end_lr: float = 10.0


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    layer_stats_every: int = 50  # per-layer gradient/weight stats every N steps; 0 turns them off


@dataclasses.dataclass(frozen=True)
class ConfirmConfig:
    """Winners that hold: after the search, the best configurations are trained again on fresh seeds
    and the export names the one with the best mean. ``top`` None: a race of candidates within a
    quarter of the study's trials (:func:`autolr.confirm._race`); ``top`` given: exactly those
    configurations. ``seeds`` None: 3 (fewer for small studies). ``step_back``: then the winner at
    that factor of its rate on the same seeds, exported if its mean is within
    :data:`autolr.confirm.STEP_BACK_TOLERANCE` of the winner's (None: no step back)."""

    enabled: bool = True
    top: int | None = None
    seeds: int | None = None
    step_back: float | None = 0.7

    def plan(self, trials: int) -> tuple[int, int]:
        """``(configurations, seeds)`` for ``trials`` trials (``top`` left to autolr: what surely fits the budget)."""
        runs = _quarter(trials)
        seeds = self.seeds or min(3, runs)
        return (self.top or max(1, runs // seeds)), seeds

    def budget(self, trials: int) -> int | None:
        """Runs the race may spend, with ``top`` left to autolr (None: ``top`` is given, and exactly those
        configurations run on every seed); at least one configuration's seeds. The step backs' come on top."""
        return None if self.top is not None else max(_quarter(trials), self.plan(trials)[1])


def _quarter(trials: int) -> int:
    """Confirmation runs at most a quarter of the study's trials (at least one)."""
    return max(1, trials // 4)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A validated study file. Exactly one of ``task`` (autolr's trainer) and ``loop`` (the user's own
    training loop) is set: a ``"package.module:function"`` string from the file, a built-in task name,
    or a callable handed to :func:`autolr.tune`."""

    path: str
    name: str
    task: str | Callable[..., Any] | None
    task_args: Mapping[str, Any]
    train: TrainConfig
    metric: str
    direction: str
    trials: int
    seed: int
    sampler: str
    search: SearchSpace
    pruning: PruningConfig
    finder: FinderConfig = FinderConfig()
    tracking: TrackingConfig = TrackingConfig()
    loop: str | Callable[..., Any] | None = None
    confirm: ConfirmConfig = ConfirmConfig()
    sampler_ceiling: bool = True  # the sampler keeps lr off the learned divergence ceiling (autolr.sampler)
    extend_space: bool = False  # never from the file: tune(extend_space=True) lets the stored study's space grow to this one

    @property
    def code(self) -> str | Callable[..., Any]:
        """What trains a trial: the task or the loop."""
        return self.task if self.task is not None else self.loop

    @property
    def code_key(self) -> str:
        return "task" if self.task is not None else "loop"

    @property
    def code_label(self) -> str:
        """The task or loop as text: ``mytasks:make``, or ``notebook:make`` for a callable."""
        code = self.code
        if code is None:
            return "<none>"
        return code if isinstance(code, str) else f"{getattr(code, '__module__', '?')}:{getattr(code, '__qualname__', repr(code))}"

    @property
    def file_stem(self) -> str:
        """The study name made safe as a file name."""
        return safe_name(self.name)


# --- reading (YAML: autolr._yaml) ----------------------------------------------------------------


def load_study(path: str | Path, *, task: Callable[..., Any] | None = None, loop: Callable[..., Any] | None = None) -> StudyConfig:
    """Read and validate a study file.

    ``task`` or ``loop``, a callable (a factory or a training loop defined in a notebook or script),
    stands in for the file's ``task:``/``loop:`` key. No user code is imported here: a study file
    names code that ``autolr tune`` runs, like a Python script, and reading one (``show``,
    ``export``) must not run it. The study file's folder and the working directory are importable when
    that code is run (appended: they never shadow packages).
    """
    path = Path(path)
    for folder in (str(Path.cwd()), str(path.resolve().parent)):
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyFileError(path, "(file)", "a readable YAML study file", f"<{exc.strerror or exc}>") from None
    try:
        raw = yaml.load(text, Loader=_yaml.Loader)  # noqa: S506 - a SafeLoader with aliases bounded
    except yaml.YAMLError as exc:
        raise StudyFileError(path, "(yaml)", "valid YAML with plain values only", f"<{_yaml.problem(exc)}>") from None
    return parse_study(raw, path=str(path), task=task, loop=loop)


# --- validation ------------------------------------------------------------------------------------

_TOP_KEYS = {
    "name", "task", "loop", "confirm", "task_args", "train", "objective", "trials", "seed", "sampler", "search", "pruning",
    "finder", "tracking",
}  # fmt: skip
_NAME_RE = re.compile(r"^[\w.\- ]+$")  # \w: letters and digits of any script, and '_'
# A name becomes a file name (<name>.db, <name>.db-wal, <name>.db.lock: at most 8 more bytes within the
# 255 bytes a file system allows a name), an MLflow run name (<name>@<date> <time> within MLflow's 250
# characters) and an Optuna study name (<name>.confirm within Optuna's 512).
MAX_NAME_CHARS = 200
MAX_NAME_BYTES = 240
# Seeds feed torch, numpy and random, and numpy's legacy seeding takes [0, 2**32). (A confirmation
# adds 1000 per fresh seed: torch takes up to 2**64, and numpy and the samplers reduce modulo 2**32.)
MAX_SEED = 2**32 - 1


def safe_name(name: str) -> str:
    """``name`` as a file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    cleaned = re.sub(r"[^\w.-]", "_", name).strip(".")
    return cleaned or "study"


def parse_study(raw: object, *, path: str = "study.yaml", task: Callable[..., Any] | None = None, loop: Callable[..., Any] | None = None) -> StudyConfig:
    """Validate a study already read from YAML (a dict) into a :class:`StudyConfig`."""
    c = _Checker(path)
    doc = c.mapping(raw, _TOP, _TOP_KEYS)
    name = _parse_name(c, doc.get("name", Path(path).stem))
    task, loop = _parse_code(c, doc, task, loop)
    objective = c.mapping(doc.get("objective"), "objective", {"metric", "direction"})
    sampler, ceiling = _parse_sampler(c, doc.get("sampler", "tpe"))
    search = _parse_search(c, c.mapping(doc.get("search"), "search", {"lr", "optimizer", "schedule", "warmup"}))
    if loop is not None and search.lr.auto:
        raise c.fail("search.lr", "{low: L, high: H} with loop: (the range test of lr: auto needs a task:, whose batches autolr sees)", "auto")
    return StudyConfig(
        path=path,
        name=name,
        task=task,
        loop=loop,
        task_args=dict(c.mapping(doc.get("task_args"), "task_args")),
        train=_parse_train(c, c.mapping(doc.get("train"), "train", {f.name for f in dataclasses.fields(TrainConfig)})),
        metric=c.string(objective.get("metric", "val_loss"), "objective.metric"),
        direction=_direction(c, objective),
        trials=c.integer(doc.get("trials", 20), "trials", minimum=1),
        seed=c.integer(doc.get("seed", 0), "seed", minimum=0, maximum=MAX_SEED),
        sampler=sampler,
        sampler_ceiling=ceiling,
        search=search,
        pruning=_parse_pruning(c, doc.get("pruning")),
        finder=_parse_finder(c, doc.get("finder")),
        tracking=_parse_tracking(c, doc.get("tracking")),
        confirm=_parse_confirm(c, doc.get("confirm", True)),
    )


def with_overrides(config: StudyConfig, *, trials: int | None = None, seed: int | None = None, extend_space: bool = False) -> StudyConfig:
    """``config`` with what ``tune``'s flags override (``--trials``, ``--seed``, ``--extend-space``),
    checked with the study file's own bounds and named as the flags."""
    c = _Checker(config.path)
    changes: dict[str, Any] = {"extend_space": True} if extend_space else {}
    if trials is not None:
        changes["trials"] = c.integer(trials, "--trials", minimum=1)
    if seed is not None:
        changes["seed"] = c.integer(seed, "--seed", minimum=0, maximum=MAX_SEED)
    return dataclasses.replace(config, **changes)


def _direction(c: _Checker, objective: dict) -> str:
    """Minimized by default, as in Optuna; a metric that reads like a score must say (minimized, it exports the worst model)."""
    metric, direction, key = str(objective.get("metric", "val_loss")), objective.get("direction"), "objective.direction"
    if direction is None and keys.reads_like_a_score(metric):
        raise c.fail(key, f"maximize or minimize ({metric} reads like a score; minimize keeps a study tuned before this rule)", "<no direction>")
    return c.choice("minimize" if direction is None else direction, key, ("minimize", "maximize"))


def _parse_sampler(c: _Checker, sampler: object) -> tuple[str, bool]:
    """``sampler: tpe`` (ceiling on) or ``sampler: {name: tpe, ceiling: false}``. Grid and random
    sample without a model to steer, so the ceiling is never theirs: ``ceiling: true`` there is refused."""
    if not isinstance(sampler, dict):
        return c.choice(sampler, "sampler", SAMPLERS), True
    s = c.mapping(sampler, "sampler", {"name", "ceiling"})
    name = c.choice(s.get("name", "tpe"), "sampler.name", SAMPLERS)
    ceiling = c.flag(s.get("ceiling", name not in UNSTEERED_SAMPLERS), "sampler.ceiling")
    if ceiling and name in UNSTEERED_SAMPLERS:
        raise c.fail("sampler.ceiling", f"false or omitted with the {name} sampler (it never uses the ceiling)", True)
    return name, ceiling


def _parse_name(c: _Checker, name: object) -> str:
    name = unicodedata.normalize("NFC", c.string(name, "name"))  # one spelling of an accented letter, one study
    if "/" in name or "\\" in name or ".." in name or not _NAME_RE.match(name):
        raise c.fail("name", "letters, digits, spaces, '.', '_' or '-' (no path separators, no '..')", name)
    if len(name) > MAX_NAME_CHARS or len(safe_name(name).encode("utf-8")) > MAX_NAME_BYTES:
        given = name if len(name) <= 40 else f"<{len(name)} characters: {name[:20]}...>"
        raise c.fail("name", f"at most {MAX_NAME_CHARS} characters and {MAX_NAME_BYTES} bytes in UTF-8 (it names the study's files)", given)
    return name


_CODE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _parse_code(c: _Checker, doc: dict, task: object, loop: object) -> tuple[Any, Any]:
    """``task`` or ``loop``: at most one, from the file or as a callable; named, never imported here.
    Neither is a study file for callables (``tune(path, task=make)``): readable (``show``,
    ``export``), but ``tune`` needs the callable (the pre-flight says so)."""
    for key, given in (("task", task), ("loop", loop)):
        if given is not None and not callable(given):
            raise c.fail(key, "a callable (a task factory or a training loop)", f"<{type(given).__name__}>")
    if task is not None or loop is not None:  # a callable from the Python API replaces the file's key
        if task is not None and loop is not None:
            raise c.fail("task", "a task factory or a loop, not both", "<both given>")
        return task, loop
    if "task" in doc and "loop" in doc:
        raise c.fail("task", "either task: (a built-in task or 'package.module:factory') or loop: ('package.module:function')", "<both>")
    if "task" not in doc and "loop" not in doc:
        return None, None
    if "loop" in doc:
        if doc.get("task_args"):
            raise c.fail("task_args", "no task_args with loop: (a loop reads its own settings)", doc["task_args"])
        return None, _parse_code_name(c, doc["loop"], "loop", builtins=())
    return _parse_code_name(c, doc["task"], "task", builtins=BUILTIN_TASK_NAMES), None


def _parse_code_name(c: _Checker, value: object, key: str, *, builtins: tuple[str, ...]) -> str:
    value = c.string(value, key)
    if value in builtins or _CODE_RE.match(value):
        return value
    if builtins:
        raise c.fail(key, f"a built-in task {sorted(builtins)} or 'package.module:factory'", value)
    raise c.fail(key, "'package.module:function'", value)


def _parse_train(c: _Checker, train: dict) -> TrainConfig:
    clip, max_steps, per_epoch = train.get("grad_clip"), train.get("max_steps"), train.get("steps_per_epoch")
    return TrainConfig(
        epochs=c.integer(train.get("epochs", TrainConfig.epochs), "train.epochs", minimum=1),
        batch_size=c.integer(train.get("batch_size", TrainConfig.batch_size), "train.batch_size", minimum=1),
        device=c.choice(train.get("device", "auto"), "train.device", DEVICES),
        grad_clip=None if clip is None else c.number(clip, "train.grad_clip", low=1e-12),
        precision=c.choice(train.get("precision", "fp32"), "train.precision", PRECISIONS),
        accumulate=c.integer(train.get("accumulate", 1), "train.accumulate", minimum=1),
        max_steps=None if max_steps is None else c.integer(max_steps, "train.max_steps", minimum=1),
        steps_per_epoch=None if per_epoch is None else c.integer(per_epoch, "train.steps_per_epoch", minimum=1),
        seed_per_trial=c.flag(train.get("seed_per_trial", False), "train.seed_per_trial"),
    )


def _parse_search(c: _Checker, search: dict) -> SearchSpace:
    from autolr.optimizers import OPTIMIZERS
    from autolr.schedules import SCHEDULES

    if "lr" not in search:
        raise c.fail("search.lr", "{low: L, high: H} (a log range, 0 < L < H) or 'auto'", "<missing>")
    optimizers = _parse_entries(c, search.get("optimizer", {"adam": {}}), "search.optimizer",
                                {k: v.params for k, v in OPTIMIZERS.items()}, search_defaults=False)  # fmt: skip
    schedules = _parse_entries(c, search.get("schedule", {"constant": {}}), "search.schedule",
                               {k: v.params for k, v in SCHEDULES.items()}, search_defaults=True)  # fmt: skip
    return SearchSpace(
        lr=_parse_lr(c, search["lr"]),
        optimizers=optimizers,
        schedules=schedules,
        warmup=_parse_warmup(c, search.get("warmup")),
    )


def _parse_lr(c: _Checker, lr: object) -> LrSearch:
    if lr == "auto":
        return LrSearch()
    if not isinstance(lr, dict):
        raise c.fail("search.lr", "{low: L, high: H} (a log range, 0 < L < H) or 'auto'", lr)
    c.mapping(lr, "search.lr", {"low", "high"})
    if "low" not in lr or "high" not in lr:
        raise c.fail("search.lr", "both low and high", lr)
    low, high = c.param(lr["low"], "search.lr.low", LR), c.param(lr["high"], "search.lr.high", LR)
    if low >= high:
        raise c.fail("search.lr", "low < high", lr)
    return LrSearch(low, high)


def _parse_warmup(c: _Checker, warmup: object) -> Setting:
    if warmup is None:
        return Fixed(0.0)
    if isinstance(warmup, dict):
        c.mapping(warmup, "search.warmup", {"low", "high"})
        low = c.param(warmup.get("low", 0.0), "search.warmup.low", WARMUP)
        high = c.param(warmup.get("high"), "search.warmup.high", WARMUP)
        if low >= high:
            raise c.fail("search.warmup", f"low < high (fractions of the total steps, at most {MAX_WARMUP})", warmup)
        return Range(low, high)
    return Fixed(c.param(warmup, "search.warmup", WARMUP))


def _parse_entries(
    c: _Checker, entries: object, key: str, registry: Mapping[str, tuple[ParamSpec, ...]], *, search_defaults: bool
) -> dict[str, dict[str, Setting]]:
    if isinstance(entries, list):  # a plain list of names: each with its defaults
        entries = {name: {} for name in entries}
    entries = c.mapping(entries, key)
    if not entries:
        raise c.fail(key, f"at least one of {sorted(registry)}", entries)
    parsed = {}
    for name, settings in entries.items():
        if name not in registry:
            raise c.fail(f"{key}.{name}", f"one of {sorted(registry)}", f"<unknown name {name!r}>")
        specs = {p.name: p for p in registry[name]}
        settings = c.mapping(settings, f"{key}.{name}", set(specs))
        parsed[name] = {
            spec.name: _parse_setting(c, settings[spec.name], f"{key}.{name}.{spec.name}", spec)
            if spec.name in settings
            else (spec.search if search_defaults and spec.search else Fixed(spec.default))
            for spec in specs.values()
        }
    return parsed


def _parse_setting(c: _Checker, value: object, key: str, spec: ParamSpec) -> Setting:
    if isinstance(value, list):
        if not value:
            raise c.fail(key, "a non-empty list of choices", value)
        return Choice(tuple(c.param(v, key, spec) for v in value))
    if isinstance(value, dict):
        c.mapping(value, key, {"low", "high", "log"})
        if spec.kind is bool:
            raise c.fail(key, "true, false or a list of them", value)
        low, high = c.param(value.get("low"), f"{key}.low", spec), c.param(value.get("high"), f"{key}.high", spec)
        log = c.flag(value.get("log", False), f"{key}.log")
        if low >= high:
            raise c.fail(key, "low < high", value)
        if log and low <= 0:
            raise c.fail(f"{key}.low", "a number > 0 for a log range", low)
        return Range(low, high, log=log, integer=spec.kind is int)
    return Fixed(c.param(value, key, spec))


def _parse_pruning(c: _Checker, pruning: object) -> PruningConfig:
    p = c.mapping(pruning, "pruning", {f.name for f in dataclasses.fields(PruningConfig)})
    return PruningConfig(
        divergence=c.flag(p.get("divergence", True), "pruning.divergence"),
        curve=c.choice(p.get("curve", "median"), "pruning.curve", CURVE_PRUNERS),
        loss_factor=c.number(p.get("loss_factor", PruningConfig.loss_factor), "pruning.loss_factor", low=1.0001),
        startup_trials=c.integer(p.get("startup_trials", PruningConfig.startup_trials), "pruning.startup_trials", minimum=0),
        warmup_epochs=_warmup_epochs(c, p.get("warmup_epochs", "auto")),
    )


def _warmup_epochs(c: _Checker, value: object) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise c.fail("pruning.warmup_epochs", "an integer >= 0 or auto", value)
    return value


def _parse_finder(c: _Checker, finder: object) -> FinderConfig:
    f = c.mapping(finder, "finder", {x.name for x in dataclasses.fields(FinderConfig)})
    start = c.number(f.get("start_lr", FinderConfig.start_lr), "finder.start_lr", low=1e-12)
    end = c.number(f.get("end_lr", FinderConfig.end_lr), "finder.end_lr", low=1e-12)
    if start >= end:
        raise c.fail("finder", "start_lr < end_lr", f)
    return FinderConfig(steps=c.integer(f.get("steps", FinderConfig.steps), "finder.steps", minimum=FINDER_STEPS.low), start_lr=start, end_lr=end)


def _parse_confirm(c: _Checker, confirm: object) -> ConfirmConfig:
    if isinstance(confirm, bool):
        return ConfirmConfig(enabled=confirm)
    f = c.mapping(confirm, "confirm", {"top", "seeds", "step_back"})
    top, seeds, step_back = f.get("top"), f.get("seeds"), f.get("step_back", ConfirmConfig.step_back)
    if step_back is not None and step_back is not False and not (isinstance(step_back, (int, float)) and not isinstance(step_back, bool) and 0 < step_back < 1):
        raise c.fail("confirm.step_back", "a factor in (0, 1) or false", step_back)
    return ConfirmConfig(
        top=None if top is None else c.integer(top, "confirm.top", minimum=1),
        seeds=None if seeds is None else c.integer(seeds, "confirm.seeds", minimum=1),
        step_back=None if step_back is None or step_back is False else float(step_back),
    )


def _parse_tracking(c: _Checker, tracking: object) -> TrackingConfig:
    t = c.mapping(tracking, "tracking", {x.name for x in dataclasses.fields(TrackingConfig)})
    every = c.integer(t.get("layer_stats_every", TrackingConfig.layer_stats_every), "tracking.layer_stats_every", minimum=0)
    return TrackingConfig(layer_stats_every=every)
