"""A study's identity: what makes its trials' values comparable, kept in the stored study.

Two study files may give one ``name`` (and so one stored study) by accident. Their trials are worth
comparing only when they train the same code on the same budget towards the same objective; a value
means nothing beside a value of another task. So the stored study remembers, under
:data:`autolr.keys.IDENTITY`, what defines it:

- the code: ``task`` (and ``task_args``) or ``loop``, a callable by its qualified name;
- the budget: ``train`` (epochs, batch size, step limits, accumulation, clipping, precision; not the
  device, which changes where a trial runs, not what it computes);
- the objective: metric and direction;
- the search space: ``lr``, the optimizers and schedules with their settings, warmup.

``trials``, ``seed``, ``sampler`` (its ceiling switch included), ``--jobs``, ``confirm``, ``pruning``, ``finder`` and ``tracking``
change how a study is run, not what its values mean: they may change freely. A file whose identity
differs is refused, never merged, with one exception asked for explicitly: ``--extend-space``
(``tune(extend_space=True)``) lets the stored search space grow to a file's wider one (every stored
trial lies in it), and the stored identity becomes the file's. Reading a study (``show``, ``export``)
through a file whose space lies inside the stored one is allowed: it names the same study.

This module knows study files and the record's format; :mod:`autolr.store` reads and writes it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autolr.config import StudyConfig
from autolr.errors import InputError
from autolr.params import Choice, Fixed, Setting

__all__ = ["check", "describe", "record", "same_code"]

_TRAIN = ("epochs", "batch_size", "max_steps", "steps_per_epoch", "accumulate", "grad_clip", "precision")


def describe(config: StudyConfig) -> dict[str, Any]:
    """The study's identity as plain JSON values (canonical: equal studies, equal dicts)."""
    search = config.search
    return {
        config.code_key: config.code_label,
        "task_args": json.loads(json.dumps(dict(config.task_args), sort_keys=True, default=str)),
        "train": {k: getattr(config.train, k) for k in _TRAIN},
        "objective": {"metric": config.metric, "direction": config.direction},
        "search": {
            "lr": "auto" if search.lr.auto else [search.lr.low, search.lr.high],
            "optimizer": {name: {p: _setting(s) for p, s in params.items()} for name, params in search.optimizers.items()},
            "schedule": {name: {p: _setting(s) for p, s in params.items()} for name, params in search.schedules.items()},
            "warmup": _setting(search.warmup),
        },
    }


def record(config: StudyConfig) -> dict[str, Any]:
    """What the stored study keeps: a fingerprint to compare, the identity to say what differs, and a
    summary to read."""
    identity = describe(config)
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return {"fingerprint": hashlib.sha256(canonical.encode()).hexdigest()[:16], "identity": identity, "summary": _summary(identity)}


def check(config: StudyConfig, stored: object, *, url: str, reading: bool, code: object = None) -> dict[str, Any] | None:
    """Whether ``config`` may run (``reading``: be read as) the study stored at ``url`` with the identity
    record ``stored``. ``code``: the ``{"key", "label"}`` of what trained the study, which autolr kept
    (:data:`autolr.keys.CODE`) before identities: a study without a record is adopted only by its own code.

    Returns:
        None when the stored record stands; the record to store instead when the study has none yet
        (a new study, or one of an autolr before identities; never when reading) or when its space is
        extended (``config.extend_space``).

    Raises:
        InputError: the file describes another study, in one line: what differs and how to proceed.
    """
    given = record(config)
    if not isinstance(stored, Mapping) or not isinstance(stored.get("identity"), Mapping):
        if isinstance(code, Mapping) and config.code is not None and not same_code(code.get("label"), config.code_label):
            raise _refused(config, url, [(str(code.get("key")), str(code.get("label")), config.code_label)], "a different task is never merged")
        return None if reading else given
    if stored.get("fingerprint") == given["fingerprint"]:
        return None
    old, new = stored["identity"], given["identity"]
    diffs = _differences(old, new, code=config.code is not None)
    if not diffs:
        return None
    if any(not key.startswith("search") for key, _, _ in diffs):
        raise _refused(config, url, diffs, "a different task, budget or objective is never merged")
    if reading and _contains(old["search"], new["search"]):
        return None
    if not _contains(new["search"], old["search"]):
        raise _refused(config, url, diffs, "its search space does not contain the stored one, so --extend-space cannot merge them")
    changed = [d for d in diffs if not reading and _kind_changed(old["search"], new["search"], d[0])]
    if changed:  # Optuna refuses another kind of distribution for a parameter its trials stored: every trial would fail
        raise _refused(config, url, changed, "a parameter searched as a choice and then a range, or on a log and then a linear scale, cannot be merged")
    if config.extend_space and not reading:
        return given
    raise _refused(config, url, diffs, "or pass --extend-space (tune(extend_space=True)) to widen the stored search space to this file's")


def widening(config: StudyConfig, stored: Mapping[str, Any]) -> str:
    """What storing ``config``'s record over the ``stored`` one widens, as the study file spells it:
    ``search.lr 0.001..0.1 -> 0.0001..0.1`` (``--extend-space``)."""
    diffs = _differences(stored["identity"], record(config)["identity"], code=config.code is not None)
    return "; ".join(f"{key} {old} -> {new}" for key, old, new in diffs)


def same_code(a: object, b: object) -> bool:
    """Whether two code labels (``module:qualname``) name the same function: equal, or with the same
    qualname where one module is the other imported from a folder further up (``tests.train_mod`` and
    ``train_mod``) or is ``__main__`` (a script's or notebook's function, named by its module in the
    study file). A callable passed to ``tune`` is labelled by its ``__module__``, which depends on how it
    was imported; the study file names it as ``python -c "import ..."`` would."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and ":" in a and ":" in b):
        return False
    (mod_a, name_a), (mod_b, name_b) = a.split(":", 1), b.split(":", 1)
    if name_a != name_b:
        return False
    return "__main__" in (mod_a, mod_b) or f".{mod_a}".endswith(f".{mod_b}") or f".{mod_b}".endswith(f".{mod_a}")


def _refused(config: StudyConfig, url: str, diffs: list[tuple[str, str, str]], how: str) -> InputError:
    what = "; ".join(f"{key}: {old} stored, {new} given{_missing(config, new) if key in ('task', 'loop') else ''}" for key, old, new in diffs[:4])
    more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
    return InputError(f"{config.path}: the study {config.name!r} in {url} was created by another study file ({what}{more}); "
                      f"give this file its own `name:` to start a new study; {how}")  # fmt: skip


def _missing(config: StudyConfig, label: object) -> str:
    """`` (no module mytask here: a typo?)`` where the given code's top-level module is nowhere on the
    path a trial imports it from (the study file's folder first), found without running any of it: a
    mistyped ``task:`` reads as another study's file otherwise."""
    if not isinstance(config.code, str) or not isinstance(label, str) or ":" not in label:
        return ""  # a built-in task, or a callable handed to tune (a script's or notebook's: __main__)
    module = label.partition(":")[0].split(".")[0]
    try:
        found = importlib.machinery.PathFinder.find_spec(module, [str(Path(config.path).resolve().parent), *sys.path]) or importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a module whose spec cannot be read: say nothing more
        return ""
    return "" if found is not None else f" (no module {module} here: a typo?)"


# --- settings as JSON, and which contains which ------------------------------------------------------


def _setting(s: Setting) -> dict[str, Any]:
    if isinstance(s, Fixed):
        return {"fixed": s.value}
    if isinstance(s, Choice):
        return {"choice": list(s.values)}
    return {"range": [s.low, s.high], "log": s.log}


def _setting_contains(wide: Mapping[str, Any], narrow: Mapping[str, Any]) -> bool:
    """Whether every value ``narrow`` may take, ``wide`` may take too (a log range holds the same values
    as a linear one: only the proposals' spread differs)."""
    values = [narrow["fixed"]] if "fixed" in narrow else narrow.get("choice")
    if "range" in wide:
        low, high = wide["range"]
        if values is None:
            return low <= narrow["range"][0] and narrow["range"][1] <= high
        return all(not isinstance(v, bool) and low <= v <= high for v in values)
    allowed = [wide["fixed"]] if "fixed" in wide else wide["choice"]
    return values is not None and all(v in allowed for v in values)


def _entries_contain(wide: Mapping[str, Mapping], narrow: Mapping[str, Mapping]) -> bool:
    return all(
        name in wide and set(settings) == set(wide[name]) and all(_setting_contains(wide[name][p], s) for p, s in settings.items())
        for name, settings in narrow.items()
    )


def _contains(wide: Mapping[str, Any], narrow: Mapping[str, Any]) -> bool:
    """Whether the search space ``wide`` holds every configuration of ``narrow``."""
    if wide["lr"] == "auto" or narrow["lr"] == "auto":
        lr = wide["lr"] == narrow["lr"]  # bounds the range test finds: not comparable with a range
    else:
        lr = wide["lr"][0] <= narrow["lr"][0] and narrow["lr"][1] <= wide["lr"][1]
    return (
        lr
        and _entries_contain(wide["optimizer"], narrow["optimizer"])
        and _entries_contain(wide["schedule"], narrow["schedule"])
        and _setting_contains(wide["warmup"], narrow["warmup"])
    )


# --- what differs, in words ---------------------------------------------------------------------------


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], *, code: bool) -> list[tuple[str, str, str]]:
    """``(key, stored, given)`` for each part of the identity that differs, as the study file spells it."""
    diffs = []
    for key in ("task", "loop") if code else ():
        if not same_code(old.get(key), new.get(key)):
            diffs.append((key, _text(old.get(key)), _text(new.get(key))))
    if old.get("task_args") != new.get("task_args"):
        diffs.append(("task_args", _text(old.get("task_args")), _text(new.get("task_args"))))
    for part in ("train", "objective"):
        for key in sorted(set(old.get(part, {})) | set(new.get(part, {}))):
            a, b = old.get(part, {}).get(key), new.get(part, {}).get(key)
            if a != b:
                diffs.append((f"{part}.{key}", _text(a), _text(b)))
    return diffs + _search_differences(old.get("search", {}), new.get("search", {}))


def _search_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    diffs = []
    if old.get("lr") != new.get("lr"):
        diffs.append(("search.lr", _lr_text(old.get("lr")), _lr_text(new.get("lr"))))
    for part in ("optimizer", "schedule"):
        a, b = old.get(part, {}), new.get(part, {})
        if set(a) != set(b):
            diffs.append((f"search.{part}", ", ".join(a) or "-", ", ".join(b) or "-"))
        for name in (n for n in a if n in b):
            for p in sorted(set(a[name]) | set(b[name])):
                if not _same(a[name].get(p), b[name].get(p)):
                    diffs.append((f"search.{part}.{name}.{p}", _setting_text(a[name].get(p)), _setting_text(b[name].get(p))))
    if not _same(old.get("warmup"), new.get("warmup")):
        diffs.append(("search.warmup", _setting_text(old.get("warmup")), _setting_text(new.get("warmup"))))
    return diffs


def _kind_changed(old: Mapping[str, Any], new: Mapping[str, Any], key: str) -> bool:
    """Whether the setting at ``key`` (``search.optimizer.sgd.momentum``, ``search.warmup``) was
    searched as one kind of Optuna distribution and is now another: a choice and a range, or a log
    and a linear range. (A fixed value is not searched: it may become either.)"""
    path = key.split(".")[1:]
    if path[0] in ("optimizer", "schedule") and len(path) == 3:
        a, b = old[path[0]].get(path[1], {}).get(path[2]), new[path[0]].get(path[1], {}).get(path[2])
    elif path == ["warmup"]:
        a, b = old.get("warmup"), new.get("warmup")
    else:
        return False
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or "fixed" in a or "fixed" in b:
        return False
    return ("choice" in a) != ("choice" in b) or ("range" in a and a.get("log") != b.get("log"))


def _same(a: object, b: object) -> bool:
    """Equal settings, a choice's values in any order: the study's trials suggest them in the order
    they stored them, whatever the file's (:mod:`autolr.choices`)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping) and "choice" in a and "choice" in b:
        return len(a["choice"]) == len(b["choice"]) and all(v in b["choice"] for v in a["choice"]) and all(v in a["choice"] for v in b["choice"])
    return a == b


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _lr_text(lr: object) -> str:
    return f"{lr[0]:g}..{lr[1]:g}" if isinstance(lr, list) else _text(lr)


def _setting_text(s: Mapping[str, Any] | None) -> str:
    if s is None:
        return "-"
    if "fixed" in s:
        return _text(s["fixed"])
    if "choice" in s:
        return "[" + ", ".join(_text(v) for v in s["choice"]) + "]"
    return f"{s['range'][0]:g}..{s['range'][1]:g}" + (" log" if s.get("log") else "")


def _summary(identity: Mapping[str, Any]) -> str:
    """One line to read in the stored study: ``task least_squares {}, train epochs=1 ..., minimize val_loss, ...``."""
    code = next(f"{k} {identity[k]}" for k in ("task", "loop") if k in identity)
    train = " ".join(f"{k}={_text(v)}" for k, v in identity["train"].items() if v is not None)
    search = identity["search"]
    return (f"{code} {_text(identity['task_args'])}, train {train}, {identity['objective']['direction']} {identity['objective']['metric']}, "
            f"lr {_lr_text(search['lr'])}, optimizer {', '.join(search['optimizer'])}, schedule {', '.join(search['schedule'])}, "
            f"warmup {_setting_text(search['warmup'])}")  # fmt: skip
