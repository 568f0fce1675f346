"""Study files: valid ones load into typed objects; each mistake is one line naming file, key, expectation."""

from __future__ import annotations

import sys
import types
import typing

import pytest

from autolr import identity
from autolr.config import LrSearch, load_study, safe_name
from autolr.errors import StudyFileError
from autolr.params import Fixed, Range
from autolr.preflight import preflight

GOOD = """
name: digits-mlp
task: digits_mlp
task_args: {hidden: 16}
train: {epochs: 2, batch_size: 64}
objective: {metric: val_loss, direction: minimize}
trials: 4
seed: 3
sampler: tpe
search:
  lr: {low: 1e-5, high: 1}
  optimizer:
    sgd: {momentum: 0.9}
    adam: {beta1: {low: 0.8, high: 0.95}}
  schedule: {constant: {}, step: {gamma: 0.5}}
  warmup: {low: 0.0, high: 0.1}
pruning: {divergence: true, curve: median}
"""


def test_good_study_loads_into_typed_objects(write_study) -> None:
    config = load_study(write_study(GOOD))
    assert config.name == "digits-mlp" and config.seed == 3 and config.trials == 4
    assert config.search.lr == LrSearch(1e-5, 1.0)  # `1e-5` is a number, not YAML 1.1's string
    assert config.search.optimizers["sgd"]["momentum"] == Fixed(0.9)
    assert config.search.optimizers["sgd"]["nesterov"] == Fixed(False)  # optimizer defaults are fixed
    assert config.search.optimizers["adam"]["beta1"] == Range(0.8, 0.95)
    assert config.search.schedules["step"]["gamma"] == Fixed(0.5)
    assert isinstance(config.search.schedules["step"]["step_frac"], Range)  # schedule defaults are searched
    assert config.search.warmup == Range(0.0, 0.1)
    assert config.train.seed_per_trial is False  # every search trial on the study's seed unless asked
    assert load_study(write_study(GOOD.replace("batch_size: 64}", "batch_size: 64, seed_per_trial: true}"))).train.seed_per_trial is True


def test_lr_auto_and_plain_lists(write_study) -> None:
    config = load_study(write_study(GOOD.replace("lr: {low: 1e-5, high: 1}", "lr: auto")))
    assert config.search.lr.auto
    text = "task: digits_mlp\nsearch: {lr: {low: 0.001, high: 0.1}, optimizer: [sgd, adam], schedule: [cosine]}\n"
    config = load_study(write_study(text, "listed.yaml"))
    assert list(config.search.optimizers) == ["sgd", "adam"] and config.name == "listed"


BAD = [
    ("unknown top-level key", GOOD + "epochs: 3\n", r"study.yaml: epochs: expected one of the keys .*unknown key 'epochs'"),
    ("unknown nested key", GOOD.replace("batch_size: 64", "batch_size: 64, epoch: 1"), r"train.epoch: expected one of the keys"),
    ("negative lr bound", GOOD.replace("low: 1e-5", "low: -1e-5"), r"search.lr.low: expected a number in \[1e-12, 1e\+06\], got -1e-05"),
    (
        "huge lr bound",
        GOOD.replace("lr: {low: 1e-5, high: 1}", "lr: {low: 1e-5, high: 1.0e+300}"),
        r"search.lr.high: expected a number in \[1e-12, 1e\+06\], got 1e\+300",
    ),
    ("zero lr bound", GOOD.replace("low: 1e-5", "low: 0"), r"search.lr.low: expected a number in \[1e-12, 1e\+06\], got 0"),
    ("low above high", GOOD.replace("low: 1e-5, high: 1", "low: 1, high: 0.1"), r"search.lr: expected low < high"),
    ("lr missing", GOOD.replace("  lr: {low: 1e-5, high: 1}\n", ""), r"search.lr: expected .* or 'auto', got <missing>"),
    ("lr a string", GOOD.replace("lr: {low: 1e-5, high: 1}", "lr: fast"), r"search.lr: expected .*'auto', got 'fast'"),
    (
        "unknown optimizer",
        GOOD.replace("adam: {beta1", "adagrad: {beta1"),
        r"search.optimizer.adagrad: expected one of \['adam', 'adamw', 'prodigy', 'rmsprop', 'schedulefree_adamw', 'sgd'\]",
    ),
    ("unknown schedule", GOOD.replace("constant: {}", "linear: {}"), r"search.schedule.linear: expected one of \[.*'cosine'"),
    ("unknown schedule param", GOOD.replace("gamma: 0.5", "gama: 0.5"), r"search.schedule.step.gama: expected one of the keys \['gamma', 'step_frac'\]"),
    ("param out of bounds", GOOD.replace("momentum: 0.9", "momentum: 1.5"), r"search.optimizer.sgd.momentum: expected a number in \[0, 0.9999\], got 1.5"),
    ("range reversed", GOOD.replace("low: 0.8, high: 0.95", "low: 0.95, high: 0.8"), r"search.optimizer.adam.beta1: expected low < high"),
    ("wrong type", GOOD.replace("epochs: 2", "epochs: two"), r"train.epochs: expected an integer >= 1, got 'two'"),
    ("bool as int", GOOD.replace("trials: 4", "trials: true"), r"trials: expected an integer >= 1, got true$"),
    ("bad sampler", GOOD.replace("sampler: tpe", "sampler: bayes"), r"sampler: expected one of \['tpe', 'random', 'grid', 'gp', 'cmaes'\], got 'bayes'"),
    (
        "bad sampler name",
        GOOD.replace("sampler: tpe", "sampler: {name: bayes}"),
        r"sampler.name: expected one of \['tpe', 'random', 'grid', 'gp', 'cmaes'\], got 'bayes'",
    ),
    ("ceiling not a flag", GOOD.replace("sampler: tpe", "sampler: {name: tpe, ceiling: 0}"), r"sampler.ceiling: expected true or false, got 0"),
    ("unknown sampler key", GOOD.replace("sampler: tpe", "sampler: {name: tpe, ceil: false}"), r"sampler.ceil: expected one of the keys \['ceiling', 'name'\]"),
    (
        "ceiling with random",
        GOOD.replace("sampler: tpe", "sampler: {name: random, ceiling: true}"),
        r"sampler.ceiling: expected false or omitted with the random sampler \(it never uses the ceiling\), got true$",
    ),
    ("bad pruner", GOOD.replace("curve: median", "curve: asha"), r"pruning.curve: expected one of \['none', 'median', 'hyperband'\]"),
    ("bad direction", GOOD.replace("direction: minimize", "direction: down"), r"objective.direction: expected one of"),
    (
        "a score without a direction",  # minimized by default, it would export the worst model without a word
        GOOD.replace("{metric: val_loss, direction: minimize}", "{metric: val_accuracy}"),
        r"objective.direction: expected maximize or minimize \(val_accuracy reads like a score; minimize keeps a study tuned before this rule\), got <no direction>",
    ),
    ("warmup too long", GOOD.replace("high: 0.1}", "high: 0.95}"), r"search.warmup.high: expected a number in \[0, 0.9\]"),
    ("name with ..", GOOD.replace("name: digits-mlp", "name: ../../etc/evil"), r"name: expected letters, digits.*no '\.\.'.*got '\.\./\.\./etc/evil'"),
    ("name with slash", GOOD.replace("name: digits-mlp", "name: a/b"), r"name: expected .*no path separators"),
    (
        "unknown builtin task",
        GOOD.replace("task: digits_mlp", "task: mnist"),
        r"task: expected a built-in task \[.*'digits_mlp'.*\] or 'package.module:factory', got 'mnist'",
    ),
    ("task and loop", GOOD.replace("task: digits_mlp", "task: digits_mlp\nloop: 'mod:train'"), r"task: expected either task: .* or loop: .*, got <both>"),
    (
        "loop not a name",
        GOOD.replace("task: digits_mlp", "loop: 'train()'").replace("task_args: {hidden: 16}", ""),
        r"loop: expected 'package.module:function', got 'train\(\)'",
    ),
    (
        "lr auto with a loop",
        GOOD.replace("task: digits_mlp", "loop: 'mod:train'").replace("task_args: {hidden: 16}", "").replace("lr: {low: 1e-5, high: 1}", "lr: auto"),
        r"search.lr: expected \{low: L, high: H\} with loop:",
    ),
    (
        "fp16 typo",
        GOOD.replace("batch_size: 64}", "batch_size: 64, precision: half}"),
        r"train.precision: expected one of \['fp32', 'bf16', 'fp16'\], got 'half'",
    ),
    ("accumulate zero", GOOD.replace("batch_size: 64}", "batch_size: 64, accumulate: 0}"), r"train.accumulate: expected an integer >= 1, got 0"),
    (
        "seed per trial not a flag",
        GOOD.replace("batch_size: 64}", "batch_size: 64, seed_per_trial: 1}"),
        r"train.seed_per_trial: expected true or false, got 1$",
    ),
    (
        "seed per trial a word",
        GOOD.replace("batch_size: 64}", "batch_size: 64, seed_per_trial: yes please}"),
        r"train.seed_per_trial: expected true or false, got 'yes please'",
    ),
    ("divergence not a flag", GOOD.replace("divergence: true", "divergence: 0"), r"pruning.divergence: expected true or false, got 0$"),
    ("not a mapping", "- just\n- a list\n", r"\(top level\): expected a mapping"),
    ("broken yaml", "name: x\nsearch: {lr: [1, 2\n", r"\(yaml\): expected valid YAML with plain values only, got <.*line \d+, column \d+>"),
    (
        "python tag",
        "name: !!python/object/apply:os.system ['echo pwned']\ntask: digits_mlp\n",
        r"\(yaml\): expected valid YAML .*could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
]


@pytest.mark.parametrize(
    "given, name, ceiling",
    [
        ("tpe", "tpe", True),
        ("{name: tpe, ceiling: false}", "tpe", False),
        ("{ceiling: false}", "tpe", False),
        ("{name: gp}", "gp", True),
        ("{name: random}", "random", False),
        ("{name: grid, ceiling: false}", "grid", False),
    ],
)
def test_sampler_names_a_sampler_and_its_ceiling(write_study, given, name, ceiling) -> None:
    config = load_study(write_study(GOOD.replace("sampler: tpe", f"sampler: {given}")))
    assert (config.sampler, config.sampler_ceiling) == (name, ceiling)


@pytest.mark.parametrize(
    "metric, direction",
    [
        ("val_loss", "minimize"),
        ("val_mse", "minimize"),
        ("val_dice_loss", "minimize"),
        ("f1_macro", None),
        ("val_top1", None),
        ("acc1", None),
        ("valAccuracy", None),
    ],
)
def test_a_loss_is_minimized_by_default_and_a_score_must_say(write_study, metric, direction) -> None:
    text = GOOD.replace("{metric: val_loss, direction: minimize}", f"{{metric: {metric}}}")
    if direction is None:
        with pytest.raises(StudyFileError, match="reads like a score"):
            load_study(write_study(text))
    else:
        assert load_study(write_study(text)).direction == direction


def test_the_ceiling_switch_is_not_part_of_the_study_identity(write_study) -> None:
    """Like ``sampler`` itself, the switch changes how a study searches, not what its values mean: a
    study may be resumed with the ceiling turned off (the benchmark's arm does) and stays one study."""
    on = load_study(write_study(GOOD))
    off = load_study(write_study(GOOD.replace("sampler: tpe", "sampler: {name: tpe, ceiling: false}")))
    assert identity.record(on)["fingerprint"] == identity.record(off)["fingerprint"]


@pytest.mark.parametrize("label, text, message", BAD, ids=[b[0] for b in BAD])
def test_bad_study_file_is_one_line_naming_file_key_and_expectation(write_study, label, text, message) -> None:
    path = write_study(text)
    with pytest.raises(StudyFileError, match=message) as info:
        load_study(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path))


PREFLIGHT_BAD = [
    (
        "neither task nor loop",
        GOOD.replace("task: digits_mlp", "").replace("task_args: {hidden: 16}", ""),
        r"task: expected either task: .* or loop: .*, or tune\(path, task=...\).*, got <neither>",
    ),
    (
        "missing task module",
        GOOD.replace("task: digits_mlp", "task: no_such_pkg.tasks:make"),
        r"task: expected an importable 'package.module:factory' \(is it on PYTHONPATH\?\).*ModuleNotFoundError",
    ),
    (
        "missing task function",
        GOOD.replace("task: digits_mlp", "task: 'autolr.tasks:nope'"),
        r"task: expected an importable .* \(the module has no such callable\), got .*has no callable 'nope'",
    ),
    (
        "bad task args",
        GOOD.replace("hidden: 16", "hiddn: 16"),
        r"task_args: expected arguments accepted by digits_mlp\(hidden, depth, val_fraction, split_seed\), got <an unexpected keyword argument 'hiddn'>$",
    ),
]


@pytest.mark.parametrize("label, text, message", PREFLIGHT_BAD, ids=[b[0] for b in PREFLIGHT_BAD])
def test_task_code_is_checked_before_the_first_trial_not_when_the_file_is_read(write_study, label, text, message) -> None:
    path = write_study(text)
    config = load_study(path)  # reading a study file imports no user code (show, export)
    with pytest.raises(StudyFileError, match=message) as info:
        preflight(config)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_a_module_whose_own_import_fails_is_not_called_missing(write_study, tmp_path, monkeypatch) -> None:
    """The module is found; what it imports is not: the line says its import raised, not PYTHONPATH."""
    (tmp_path / "needsdep.py").write_text("import no_such_dependency\ndef make():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_study(write_study(GOOD.replace("task: digits_mlp", "task: 'needsdep:make'").replace("task_args: {hidden: 16}", "")))
    with pytest.raises(
        StudyFileError, match=r"expected an importable 'package.module:factory' \(importing it raised\), got <needsdep:make: .*no_such_dependency"
    ):
        preflight(config)


def test_a_callable_of_a_script_piped_to_python_cannot_cross_to_workers(monkeypatch) -> None:
    """``python - < script.py``: ``__main__`` has a ``__file__`` (``<stdin>``) that no worker can run."""
    from autolr.config import StudyConfig
    from autolr.errors import InputError
    from autolr.preflight import check_crosses_processes

    def make():
        pass

    make.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "<stdin>", raising=False)
    config = types.SimpleNamespace(code=make, code_key="task", code_label="__main__:make")
    with pytest.raises(InputError, match="defined in a notebook or an interactive session"):
        check_crosses_processes(typing.cast(StudyConfig, config), jobs=2)


def test_reading_a_study_file_never_runs_its_code(write_study, tmp_path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make():\n    pass\n")
    load_study(write_study(GOOD.replace("task: digits_mlp", "task: 'sideeffect:make'").replace("task_args: {hidden: 16}", "")))
    assert not marker.exists()


def test_missing_file(tmp_path) -> None:
    with pytest.raises(StudyFileError, match=r"nope.yaml: \(file\): expected a readable YAML study file, got <No such file"):
        load_study(tmp_path / "nope.yaml")


def test_python_tag_is_never_executed(write_study, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_study(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(StudyFileError):
        load_study(path)
    assert not marker.exists()


@pytest.mark.parametrize("name, safe", [("digits mlp", "digits_mlp"), ("a.b-c_d", "a.b-c_d"), ("...", "study")])
def test_safe_name(name: str, safe: str) -> None:
    assert safe_name(name) == safe
