"""Issue 11, the inputs a study is told apart by and bounded in: a study's identity (another study file
under the same name is refused, never merged), the SQLite file that must hold the study on its own
(after kill -9, read-only), foreign storages, YAML alias bombs, names, seeds and the PostgreSQL driver."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml

import autolr
from autolr import keys
from autolr.cli import main
from tests.faultkit import autolr_process, run_autolr, trials_beside, wait_for

SMALL = """\
name: {name}
task: {task}
train: {{epochs: {epochs}, batch_size: 64}}
trials: {trials}
confirm: false
pruning: {{curve: none}}
search:
  lr: {{low: {low}, high: {high}}}
  optimizer: {optimizers}
"""


def _study(tmp_path: Path, file: str, *, name: str = "shared", task: str = "least_squares", epochs: int = 1, trials: int = 2,
           low: str = "1.0e-3", high: str = "0.1", optimizers: str = "[adam]", extra: str = "") -> Path:  # fmt: skip
    path = tmp_path / file
    text = SMALL.format(name=name, task=task, epochs=epochs, trials=trials, low=low, high=high, optimizers=optimizers)
    path.write_text(text + extra, encoding="utf-8")
    return path


def _tune(path: Path, *args: str) -> int:
    return main(["tune", str(path), "--no-tracking", *args])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


# --- a study's identity --------------------------------------------------------------------------


def test_another_task_under_the_same_name_is_refused_in_one_line(tmp_path, capsys) -> None:
    a = _study(tmp_path, "A.yaml", task="least_squares")
    b = _study(tmp_path, "B.yaml", task="wine_mlp", trials=4)
    assert _tune(a) == 0
    capsys.readouterr()
    assert _tune(b) == 2
    line = _error(capsys)
    assert "B.yaml" in line and "'shared'" in line and "task: least_squares stored, wine_mlp given" in line
    assert "name:" in line  # how to proceed: a name of its own
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'shared.db'}")
    assert len(study.trials) == 2  # B ran nothing in A's study
    # A read of the study through B's file is refused too, instead of labelling A's trial `wine_mlp`
    for command in (["show", str(b)], ["export", str(b)]):
        assert main(command) == 2
        assert "task: least_squares stored, wine_mlp given" in _error(capsys)


def test_a_mistyped_task_module_under_an_existing_study_says_it_is_not_there(tmp_path, capsys) -> None:
    (tmp_path / "mytasks.py").write_text("from autolr.tasks import least_squares as make\n")
    assert _tune(_study(tmp_path, "A.yaml", task="'mytasks:make'")) == 0
    capsys.readouterr()
    assert _tune(_study(tmp_path, "A.yaml", task="'mytask:make'")) == 2
    assert "task: mytasks:make stored, mytask:make given (no module mytask here: a typo?)" in _error(capsys)
    assert _tune(_study(tmp_path, "A.yaml", task="'mytasks:other'")) == 2  # a module that is there: another study's file
    assert "stored, mytasks:other given)" in _error(capsys)


def test_a_notebooks_callable_under_another_studys_name_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    assert _tune(_study(tmp_path, "A.yaml")) == 0
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)  # a script's or notebook's __main__, not pytest's

    def make(**kwargs):
        return autolr.tasks.wine_mlp(**kwargs)

    make.__module__ = "__main__"  # as a notebook's or a script's function is labelled (its __spec__ is None there)
    with pytest.raises(autolr.InputError, match="created by another study file"):
        autolr.tune(str(tmp_path / "A.yaml"), task=make, storage=f"sqlite:///{tmp_path / 'shared.db'}", tracking_uri=None, progress=False)


def test_a_changed_budget_or_objective_is_refused_even_with_extend_space(tmp_path, capsys) -> None:
    a = _study(tmp_path, "A.yaml", epochs=1)
    assert _tune(a) == 0
    capsys.readouterr()
    b = _study(tmp_path, "B.yaml", epochs=2)
    assert _tune(b, "--extend-space") == 2
    assert "train.epochs: 1 stored, 2 given" in _error(capsys)
    c = _study(tmp_path, "C.yaml", extra="objective: {metric: val_loss, direction: maximize}\n")
    assert _tune(c) == 2
    assert "objective.direction: minimize stored, maximize given" in _error(capsys)


def test_a_wider_space_needs_extend_space_and_a_narrower_one_is_refused(tmp_path, capsys, caplog) -> None:
    a = _study(tmp_path, "A.yaml")
    assert _tune(a) == 0
    capsys.readouterr()
    wider = _study(tmp_path, "wider.yaml", low="1.0e-4", optimizers="{adam: {}, sgd: {momentum: 0.9}}", trials=3)
    assert _tune(wider) == 2
    line = _error(capsys)
    assert "--extend-space" in line and "search.optimizer" in line and "search.lr" in line
    assert _tune(wider, "--extend-space") == 0
    (widened,) = [r.getMessage() for r in caplog.records if "--extend-space widened" in r.getMessage()]  # once, as it is stored
    assert "the search space of study 'shared'" in widened and "search.lr 0.001..0.1 -> 0.0001..0.1" in widened
    capsys.readouterr()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 3
    assert _tune(wider, "--trials", "4") == 0  # the stored identity is the wider one now: no flag needed
    capsys.readouterr()
    assert main(["show", str(a)]) == 0  # the old file's space lies inside the stored one: readable
    capsys.readouterr()
    narrower = _study(tmp_path, "narrow.yaml", low="1.0e-2", optimizers="[adam]")
    assert _tune(narrower, "--extend-space") == 2
    assert "search.lr: 0.0001..0.1 stored, 0.01..0.1 given" in _error(capsys)


CHOICES = """\
name: shared
task: least_squares
train: {{epochs: 2, batch_size: 64}}
trials: {trials}
confirm: {{top: 1, seeds: 1}}
pruning: {{curve: none}}
search:
  lr: {{low: 1.0e-3, high: 0.1}}
  optimizer: {optimizers}
  schedule: {schedules}
"""


def test_a_study_file_with_its_choices_reordered_or_added_to_runs_every_trial(tmp_path, capsys, caplog) -> None:
    """Optuna keeps a categorical's choices, in order, for the life of a study: a file that lists the
    same schedules in another order, or adds one (``--extend-space``), failed every trial ("dynamic
    value space"). The stored order decides, new choices come after it, and the stored trials'
    distributions are widened with their values kept; TPE past its start-up reads them all."""
    first = tmp_path / "first.yaml"
    first.write_text(CHOICES.format(trials=12, optimizers="{adam: {}, sgd: {nesterov: [false, true]}}", schedules="{constant: {}, cosine: {}}"))
    assert _tune(first) == 0
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    before = {t.number: t.params for t in optuna.load_study(study_name="shared", storage=url).trials}
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(CHOICES.format(trials=15, optimizers="{sgd: {nesterov: [true, false]}, adam: {}}", schedules="{cosine: {}, constant: {}}"))
    assert _tune(reordered) == 0
    wider = tmp_path / "wider.yaml"
    wider.write_text(
        CHOICES.format(trials=22, optimizers="{sgd: {nesterov: [true, false]}, adamw: {}, adam: {}}", schedules="{step: {}, cosine: {}, constant: {}}")
    )
    capsys.readouterr()
    assert _tune(wider) == 2  # adding a choice still needs asking for
    assert "--extend-space" in _error(capsys)
    assert _tune(wider, "--extend-space") == 0
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.state.name for t in study.trials].count("FAIL") == 0 and len(study.trials) == 22
    assert {t.number: t.params for t in study.trials if t.number in before} == before  # every stored value reads as it did
    schedules = {t.distributions["schedule"].choices for t in study.trials}
    assert schedules == {("constant", "cosine", "step")}  # the stored order first, for old and new trials alike
    assert {t.distributions["optimizer"].choices for t in study.trials} == {("adam", "sgd", "adamw")}
    assert {t.distributions["sgd.nesterov"].choices for t in study.trials if "sgd.nesterov" in t.distributions} == {(False, True)}

    # the confirmation's study, opened for a run after the search's was widened, takes a new choice too
    from autolr import store
    from autolr.claim import start_owned
    from autolr.config import PruningConfig
    from autolr.space import suggest_run

    config = store.check_identity(autolr.load_study(wider), url)
    confirm = store.create_or_load(dataclasses.replace(config, name="shared.confirm", pruning=PruningConfig(curve="none")), url,
                                   sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner(), identity=False)  # fmt: skip
    assert len(confirm.trials) >= 1  # it holds runs suggested from the old choices
    trial = start_owned(confirm, {"optimizer": "adamw", "lr": 0.01, "schedule": "step"}, {})
    run = suggest_run(trial, config.search, {name: (1e-3, 0.1) for name in config.search.optimizers})
    assert (run.optimizer, run.schedule) == ("adamw", "step")

    # within one invocation the trials were read (and cached) before the widening: they are read again,
    # or TPE would see two distributions for `schedule` and leave it out of its joint model
    widest = tmp_path / "widest.yaml"
    widest.write_text(wider.read_text().replace("{step: {}, cosine: {}, constant: {}}", "{step: {}, cosine: {}, constant: {}, exponential: {}}"))
    config = dataclasses.replace(autolr.load_study(widest), extend_space=True)
    with store.reusing_storages():
        assert {t.distributions["schedule"].choices for t in store.load(config, url, identity=False).trials} == {("constant", "cosine", "step")}
        study = store.create_or_load(store.check_identity(config, url), url, sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())
        assert {t.distributions["schedule"].choices for t in study.get_trials(deepcopy=False)} == {("constant", "cosine", "step", "exponential")}


@pytest.mark.parametrize(
    ("stored", "given", "said"),
    [
        ("{sgd: {momentum: [0.8, 0.9]}}", "{sgd: {momentum: {low: 0.5, high: 0.95}}}", "search.optimizer.sgd.momentum: [0.8, 0.9] stored, 0.5..0.95 given"),
        ("{sgd: {momentum: {low: 0.5, high: 0.9}}}", "{sgd: {momentum: {low: 0.5, high: 0.95, log: true}}}", "0.5..0.9 stored, 0.5..0.95 log given"),
    ],
)
def test_a_parameter_that_changes_its_kind_is_not_merged(tmp_path, capsys, stored: str, given: str, said: str) -> None:
    """A choice that becomes a range, or a linear range that becomes a log one, lies inside the wider
    space but is another kind of Optuna distribution, which a study's stored trials refuse: merged,
    every later trial failed and the old file was refused as narrower. So it is refused, in one line,
    with the study left as it was."""
    first = _study(tmp_path, "first.yaml", trials=2, optimizers=stored)
    assert _tune(first) == 0
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    kept = optuna.load_study(study_name="shared", storage=url).user_attrs[keys.IDENTITY]
    capsys.readouterr()
    assert _tune(_study(tmp_path, "second.yaml", trials=4, optimizers=given), "--extend-space") == 2
    line = _error(capsys)
    assert said in line and "cannot be merged" in line
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 2 and study.user_attrs[keys.IDENTITY] == kept
    assert _tune(first, "--trials", "3") == 0  # the old file still runs it


def test_trials_seed_jobs_pruning_and_confirm_may_change(tmp_path, capsys) -> None:
    a = _study(tmp_path, "A.yaml", trials=2)
    assert _tune(a) == 0
    b = _study(tmp_path, "B.yaml", trials=3, extra="seed: 7\nsampler: random\n")
    b.write_text(b.read_text().replace("confirm: false", "confirm: {top: 1, seeds: 1}").replace("curve: none", "curve: median"))
    assert _tune(b, "--seed", "3") == 0
    capsys.readouterr()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 3
    assert len(optuna.load_study(study_name="shared.confirm", storage=url).trials) == 2  # the sibling study works: the winner and its step back
    seeds = [t.user_attrs[keys.SEED] for t in optuna.load_study(study_name="shared", storage=url).trials]
    assert seeds[2] == 3  # --seed's, which the file (seed: 7) does not hold
    assert main(["export", str(b)]) == 0
    exported = yaml.safe_load(capsys.readouterr().out)
    assert exported["seed"] == seeds[exported["trial"]]  # what its trial trained on


def test_a_study_of_an_older_autolr_is_adopted(tmp_path, capsys) -> None:
    a = _study(tmp_path, "A.yaml", trials=1)
    assert _tune(a) == 0
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with sqlite3.connect(tmp_path / "shared.db") as conn:  # as autolr before the identity wrote it
        conn.execute("DELETE FROM study_user_attributes WHERE key = ?", (keys.IDENTITY,))
    assert keys.IDENTITY not in optuna.load_study(study_name="shared", storage=url).user_attrs
    assert main(["show", str(a)]) == 0  # a read writes nothing
    assert keys.IDENTITY not in optuna.load_study(study_name="shared", storage=url).user_attrs
    capsys.readouterr()
    b = _study(tmp_path, "B.yaml", task="wine_mlp", trials=2)
    assert _tune(b) == 2  # the task it kept before identities tells another file apart
    assert "task: least_squares stored, wine_mlp given" in _error(capsys)
    c = _study(tmp_path, "C.yaml", trials=2, extra="objective: {metric: val_loss, direction: maximize}\n")
    assert _tune(c) == 2
    assert "objective.direction: expected minimize" in _error(capsys)
    assert keys.IDENTITY not in optuna.load_study(study_name="shared", storage=url).user_attrs  # neither adopted it
    assert _tune(a, "--trials", "2") == 0
    assert keys.IDENTITY in optuna.load_study(study_name="shared", storage=url).user_attrs


def test_callables_are_told_apart_by_their_qualified_name(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: calls\ntrain: {epochs: 1}\ntrials: 1\nconfirm: false\nsearch: {lr: {low: 1.0e-3, high: 0.1}}\n")
    from autolr.tasks import BUILTIN_TASKS

    def least_squares(**kwargs):
        return BUILTIN_TASKS["least_squares"](**kwargs)

    def other(**kwargs):
        return BUILTIN_TASKS["least_squares"](**kwargs)

    autolr.tune(path, task=least_squares, tracking_uri=None, progress=False)
    with pytest.raises(autolr.InputError, match="other given"):
        autolr.tune(path, task=other, tracking_uri=None, progress=False)


def test_a_callable_and_the_study_file_naming_it_are_one_study() -> None:
    from autolr.identity import same_code

    # tune(loop=train) labels it by how it was imported; the study file (read by export) by its module path
    assert same_code("test_mod:train", "tests.test_mod:train") and same_code("pkg.mod:train", "mod:train")
    assert same_code("__main__:train", "mymodule:train")  # a script's or notebook's function
    assert not same_code("mod:train", "mod:other") and not same_code("a.mod:train", "b.other:train")
    assert not same_code("digits_mlp", "wine_mlp") and not same_code("amod:train", "mod:train")


# --- the SQLite file holds the study on its own ---------------------------------------------------


def test_the_db_file_alone_holds_every_finished_trial_after_kill_9(tmp_path) -> None:
    path = _study(tmp_path, "k.yaml", name="killed", task="digits_mlp", epochs=100, trials=50, high="0.05")
    proc = autolr_process("tune", str(path), "--no-tracking")
    try:
        # killed mid-training, once the checkpoint after the last finished trial has run: a kill inside
        # the checkpoint itself (a background thread, in the first milliseconds of the next trial) leaves
        # the .db needing its -wal, by SQLite's design; a digits epoch (~20 ms) keeps the kill far from it
        wait_for(lambda: _training_after_checkpoint(tmp_path / "killed.db", 2), timeout_s=120, what="two finished trials in the .db alone, a third training")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "killed.db", copy / "killed.db")  # the .db alone, as users back up
    assert _finished(f"sqlite:///{copy / 'killed.db'}", "killed") >= 2


def _training_after_checkpoint(db: Path, at_least: int) -> bool:
    """A trial is running and has reported an epoch, but not past its tenth of 100 (the process is inside
    training, a second from the next checkpoint), and a copy of the ``.db`` file alone holds every one of
    the ``at_least`` or more finished trials (the checkpoint after the last one has run)."""
    trials = trials_beside(f"sqlite:///{db}", "killed")
    finished = len([t for t in trials if t.state.is_finished()])
    training = any(t.state.name == "RUNNING" and t.intermediate_values and max(t.intermediate_values) <= 10 for t in trials)
    if finished < at_least or not training:
        return False
    # SQLite's own checkpoint, every 1000 pages of -wal, comes some 30 trials in: autolr's is each trial's
    assert finished <= at_least + 3, f"{finished} trials finished and the .db alone still lags the -wal"
    probe = Path(tempfile.mkdtemp(dir=db.parent)) / db.name  # a folder of its own: no -wal of an earlier probe
    shutil.copy(db, probe)
    try:
        return _finished(f"sqlite:///{probe}", "killed") == finished
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DatabaseError):  # copied in a checkpoint
        return False


def _finished(url: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return 0
    return len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])


def _show_and_export(path: Path) -> list[str]:
    """``python -c CODE`` running ``autolr show PATH`` then ``autolr export PATH`` in one process (one
    start-up, not two), exiting with the first non-zero exit code."""
    code = f"import sys; from autolr.cli import main; sys.exit(main(['show', {str(path)!r}]) or main(['export', {str(path)!r}]))"
    return [sys.executable, "-c", code]


def _read_only(folder: Path, command: list[str]) -> subprocess.CompletedProcess:
    """``command`` with ``folder`` read-only: chmod for a user; for root, whom chmod does not stop, a
    read-only bind mount of the folder in a private mount namespace (``unshare -m``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in (folder, *folder.iterdir())}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(command, env=env, text=True, capture_output=True, timeout=120)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: no honest way to make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && touch "$0/probe" 2>/dev/null && exit 99; exec "$@"'
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(folder), *command],
                          env=env, text=True, capture_output=True, timeout=120)  # fmt: skip
    if done.returncode == 99 or "mount:" in done.stderr:
        pytest.skip(f"could not make {folder} read-only here: {done.stderr.strip()[:200]}")
    return done


def test_show_and_export_work_on_a_read_only_study(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _study(folder, "r.yaml", name="readonly", trials=2)
    done = run_autolr("tune", str(path), "--no-tracking")
    assert done.returncode == 0, done.stderr
    wal = folder / "readonly.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # a clean exit leaves the whole study in the .db
    for leftover in folder.glob("readonly.db*"):
        if leftover.name != "readonly.db":
            leftover.unlink()  # as a user copies only the study file and its .db
    before = sorted(p.name for p in folder.iterdir())
    done = _read_only(folder, _show_and_export(path))
    assert done.returncode == 0, done.stderr
    assert "study readonly: 2 complete" in done.stdout and "params:" in done.stdout  # show's table, export's YAML
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_a_foreign_sqlite_file_is_refused_in_one_line_and_left_alone(tmp_path, capsys) -> None:
    path = _study(tmp_path, "f.yaml", name="foreign")
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    mlflow_like = tmp_path / "mlflow.db"
    with sqlite3.connect(mlflow_like) as conn:  # another program's alembic schema (MLflow's store)
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        conn.execute("INSERT INTO alembic_version VALUES ('1b5f0d9ad7c1')")
    alien = tmp_path / "alien.db"  # Optuna's tables, but a schema revision no Optuna version knows
    assert _tune(_study(tmp_path, "alien.yaml", name="alien", trials=1), "--storage", f"sqlite:///{alien}") == 0
    with sqlite3.connect(alien) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    capsys.readouterr()
    for db in (foreign, junk, mlflow_like, alien):
        for command in ("show", "tune"):
            assert main([command, str(path), "--storage", f"sqlite:///{db}", *(["--no-tracking"] if command == "tune" else [])]) == 2
            line = _error(capsys)
            assert str(db) in line and "not an autolr/Optuna study storage" in line, line
    with sqlite3.connect(foreign) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]


# --- bounded inputs ------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\ntask: least_squares\nsearch: {lr: {low: 1.0e-3, high: 0.1}}\nbombs:\n"
                    + textwrap.indent("\n".join(levels), "  ") + "\ntrials: *j\n")  # fmt: skip
    assert len(path.read_bytes()) < 600
    assert main(["show", str(path)]) == 2
    line = _error(capsys)
    assert "bomb.yaml" in line and "aliases" in line


def test_a_few_aliases_still_load(tmp_path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: aliases
        task: least_squares
        train: &budget {epochs: 2, batch_size: 32}
        task_args: {}
        search:
          lr: &lr {low: 1.0e-3, high: 0.1}
          optimizer: {adam: {}, sgd: {momentum: 0.9}}
        """)
    )
    config = autolr.load_study(path)
    assert config.train.epochs == 2 and config.search.lr.low == 1e-3


def test_a_key_given_twice_is_refused_and_a_merge_may_still_override(tmp_path, capsys) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\ntask: least_squares\ntrials: 3\nsearch: {lr: {low: 1.0e-3, high: 0.1}}\ntrials: 4\n")
    assert main(["show", str(path)]) == 2
    assert _error(capsys) == f"autolr: error: {path}: (yaml): expected valid YAML with plain values only, got <key 'trials' given twice at line 5, column 1>"
    merged = tmp_path / "merged.yaml"
    merged.write_text("name: merged\ntask: least_squares\nsearch:\n  lr: {<<: {low: 1.0e-3, high: 0.1}, high: 0.2}\n")
    assert autolr.load_study(merged).search.lr.high == 0.2
    for text, key in (("{<<: {low: 1.0e-3, low: 2.0e-3}}", "low"), ("{<<: *a, <<: *a}", "<<")):  # inside a merge; two merges
        path.write_text(f"name: twice\ntask: least_squares\nbase: &a {{high: 0.1}}\nsearch:\n  lr: {text}\n")
        assert main(["show", str(path)]) == 2
        assert f"key {key!r} given twice at line 5" in _error(capsys)


def test_a_301_character_name_is_refused_in_one_line(tmp_path, capsys) -> None:
    path = _study(tmp_path, "long.yaml", name="a" * 301)
    assert _tune(path) == 2
    line = _error(capsys)
    assert "long.yaml: name: expected" in line and "200 characters" in line
    assert not list(tmp_path.glob("*.db"))


def test_a_huge_seed_is_refused_naming_the_flag(tmp_path, capsys) -> None:
    path = _study(tmp_path, "s.yaml", name="seeded")
    assert _tune(path, "--seed", str(2**70)) == 2
    line = _error(capsys)
    assert "--seed" in line and "4294967295" in line and "task" not in line
    assert not list(tmp_path.glob("*.db"))  # refused before anything is written
    in_file = _study(tmp_path, "s2.yaml", name="seeded", extra=f"seed: {2**70}\n")
    assert _tune(in_file) == 2
    assert "seed: expected an integer in [0, 4294967295]" in _error(capsys)
    largest = _study(tmp_path, "s3.yaml", name="seeded", trials=1)
    largest.write_text(largest.read_text().replace("confirm: false", "confirm: {top: 1, seeds: 2}"))
    assert _tune(largest, "--seed", str(2**32 - 1)) == 0  # the largest, and its confirmation's fresh seeds above it, train
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    assert [t.state.name for t in optuna.load_study(study_name="seeded.confirm", storage=url).trials] == ["COMPLETE"] * 4  # and the step back's


def test_a_name_with_non_ascii_letters_is_a_study_of_its_own(tmp_path, capsys) -> None:
    path = _study(tmp_path, "u.yaml", name="étude-ü", trials=1)
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert main(["tune", str(path), "--tracking-uri", tracking]) == 0
    assert (tmp_path / "étude-ü.db").exists()
    assert main(["show", str(path)]) == 0
    assert "study étude-ü: 1 complete" in capsys.readouterr().out
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking).get_experiment_by_name("étude-ü") is not None


def test_lr_bounds_beyond_what_float32_trains_are_refused(tmp_path, capsys) -> None:
    path = _study(tmp_path, "lr.yaml", name="lr", low="1.0e-300", high="1.0e300")
    assert _tune(path) == 2
    assert "search.lr.low: expected a number in [1e-12, 1e+06]" in _error(capsys)


# --- show and export never import the task ----------------------------------------------------------


def test_show_and_export_never_import_the_task(tmp_path) -> None:
    (tmp_path / "boobytrap.py").write_text(
        textwrap.dedent("""\
        import os
        if os.environ.get("AUTOLR_TEST_TRAP"):
            raise SystemExit("imported the task module")
        from autolr.tasks import BUILTIN_TASKS
        make = BUILTIN_TASKS["least_squares"]
        """)
    )
    path = _study(tmp_path, "t.yaml", name="trap", task='"boobytrap:make"', trials=1)
    assert _tune(path) == 0  # tune imports it (the folder of the study file is importable)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "AUTOLR_TEST_TRAP": "1"}
    done = subprocess.run(_show_and_export(path), cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "study trap: 1 complete" in done.stdout and "params:" in done.stdout
    # reading a study trains nothing, and pays for no torch (about 2 s of a 4 s `autolr show` before)
    code = f"import sys; from autolr.cli import main; main(['show', {str(path)!r}]); main(['compare', {str(path)!r}]); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "False", done.stdout + done.stderr


def test_tune_on_a_study_already_done_builds_no_task(tmp_path, monkeypatch) -> None:
    """At its target with its confirmation over, a study trains nothing: building its task (imports,
    data, one step) would only cost seconds; a larger target builds it as ever."""
    (tmp_path / "counted.py").write_text(
        textwrap.dedent("""\
        import os
        from autolr.tasks import BUILTIN_TASKS
        def make():
            if os.environ.get("AUTOLR_TEST_TRAP"):
                raise SystemExit("built the task")
            return BUILTIN_TASKS["least_squares"]()
        """)
    )
    path = _study(tmp_path, "t.yaml", name="done", task='"counted:make"', trials=2)
    assert _tune(path) == 0
    monkeypatch.setenv("AUTOLR_TEST_TRAP", "1")
    assert _tune(path) == 0
    with pytest.raises(SystemExit, match="built the task"):
        _tune(path, "--trials", "3")


# --- the PostgreSQL driver ---------------------------------------------------------------------------


def test_a_missing_postgres_driver_names_the_extra(tmp_path, capsys, monkeypatch) -> None:
    path = _study(tmp_path, "p.yaml", name="pg")
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # as where the driver is not installed
    assert main(["show", str(path), "--storage", "postgresql://postgres@127.0.0.1:5432/test"]) == 2
    line = _error(capsys)
    assert "pip install 'autolr[postgres]'" in line and "postgresql://" in line


@pytest.mark.postgres
def test_a_plain_postgresql_url_works(tmp_path, postgres_url, unique_name) -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 (autolr[postgres]) is not installed")
    plain = "postgresql://" + postgres_url.split("://", 1)[1]
    path = _study(tmp_path, "pg.yaml", name=unique_name, trials=1)
    assert _tune(path, "--storage", plain) == 0
    assert len(optuna.load_study(study_name=unique_name, storage=plain).trials) == 1
