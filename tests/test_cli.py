"""End to end through ``autolr.cli.main(argv)``: the stores' contents, resume, export, bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

import autolr
from autolr.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "studies" / "quickstart.yaml")


def _args(stores) -> list[str]:
    return ["--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]


def _runs(stores, experiment: str):
    client = MlflowClient(stores["tracking_uri"])
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autolr.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.data.tags.get("autolr.role") == "trial"]
    return client, parents, children


def test_quickstart_tune_export_and_mlflow_layout(stores, tmp_path, capsys) -> None:
    assert main(["tune", QUICKSTART, "--trials", "6", *_args(stores)]) == 0
    out = capsys.readouterr().out
    assert "study quickstart:" in out and "best single seed: trial" in out and "winner on fresh seeds: trial" in out
    assert "lr searched: adam 0.0001-3, sgd 0.0001-3\n" in out  # each optimizer's range (lr: auto: the range test's)

    study = optuna.load_study(study_name="quickstart", storage=stores["storage"])
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6

    client, parents, children = _runs(stores, "quickstart")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(study.trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for run in children:
        tags = run.data.tags
        trial = study.trials[int(tags["autolr.trial"])]
        assert tags["autolr.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        assert {"lr", "optimizer", "schedule", "warmup"} <= set(run.data.params)
        steps = trial.user_attrs["autolr.steps"]
        for key in ("train_loss", "lr", "grad_norm"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(steps)), key
        if trial.state.name == "PRUNED":
            assert tags["autolr.prune_reason"] == trial.user_attrs["autolr.prune_reason"]
        else:
            assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 8  # one per epoch

    out_path = tmp_path / "best.json"
    assert main(["export", QUICKSTART, "-o", str(out_path), "--storage", stores["storage"]]) == 0  # json: by the file's name
    export = json.loads(out_path.read_text())
    assert {"study", "metric", "direction", "value", "trial", "params", "epochs", "batch_size"} <= set(export)
    assert {"optimizer", "lr", "schedule", "warmup"} <= set(export["params"])
    assert export["single_seed_value"] == study.best_value and export["trial"] == study.best_trial.number  # one candidate at 6 trials
    assert export["value"] == export["confirmed"]["mean"] and len(export["confirmed"]["values"]) == 1  # a quarter of 6 trials: one fresh seed
    assert export["epochs"] == 8 and export["batch_size"] == 64

    assert main(["export", QUICKSTART, "--storage", stores["storage"]]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["trial"] == export["trial"]
    assert main(["show", QUICKSTART, "--storage", stores["storage"]]) == 0
    shown = capsys.readouterr().out
    assert "COMPLETE" in shown and "prune reason" in shown
    assert main(["show", QUICKSTART, "--storage", stores["storage"], "--top", "2"]) == 0
    assert "(2 of 6 trials, best first; show --top 6 lists them all)" in capsys.readouterr().out  # where the rest are


def test_rerun_resumes_up_to_the_target(stores, write_study, capsys) -> None:
    path = str(write_study(SMALL))
    assert main(["tune", path, "--trials", "3", *_args(stores)]) == 0
    capsys.readouterr()
    assert main(["tune", path, "--trials", "5", *_args(stores)]) == 0
    said = capsys.readouterr().err
    assert "3/5" in said and "resuming: 3 finished before" in said  # the progress bar starts where the study stands, and says why
    study = optuna.load_study(study_name="small", storage=stores["storage"])
    assert len(study.trials) == 5
    capsys.readouterr()
    assert main(["tune", path, "--trials", "5", *_args(stores)]) == 0  # already there: runs nothing, says so
    assert "already holds 5 finished trials, its target being 5" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="small", storage=stores["storage"]).trials) == 5
    assert main(["tune", path, "--trials", "4", *_args(stores)]) == 0  # past it: says how many it holds, not the target alone
    assert "already holds 5 finished trials, its target being 4" in capsys.readouterr().err
    _, parents, _ = _runs(stores, "small")
    assert len(parents) == 2  # one per invocation that ran trials


SMALL = """
name: small
task: digits_mlp
task_args: {hidden: 16}
train: {epochs: 2, batch_size: 128}
trials: 4
search:
  lr: {low: 1e-3, high: 0.5}
  optimizer: {sgd: {}, adam: {}}
  schedule: {constant: {}, cosine: {}}
pruning: {curve: none}
"""

USER_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import autolr
from sklearn.datasets import load_digits

def make(channels=4):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Flatten(), nn.Linear(channels * 64, 10))
    acc = lambda out, t: (out.argmax(1) == t).float().mean().item()
    return autolr.Task(model=model, train_data=TensorDataset(x[:1200], y[:1200]),
                       val_data=TensorDataset(x[1200:], y[1200:]), loss_fn=nn.functional.cross_entropy,
                       metrics={"accuracy": acc})
"""


def test_user_cnn_task_and_load_best_rebuilds_the_logged_lr_curve(stores, write_study, tmp_path) -> None:
    (tmp_path / "my_cnn_task.py").write_text(USER_TASK)
    path = str(
        write_study("""
        name: cnn
        task: "my_cnn_task:make"
        task_args: {channels: 4}
        train: {epochs: 2, batch_size: 100}
        objective: {metric: accuracy, direction: maximize}
        trials: 4
        search:
          lr: {low: 1e-3, high: 0.3}
          optimizer: {sgd: {momentum: 0.9, nesterov: [true, false]}, adamw: {}}
          schedule: {one_cycle: {}, warmup_stable_decay: {}, plateau: {}}
          warmup: {low: 0.0, high: 0.2}
        pruning: {curve: none}
    """)
    )
    assert main(["tune", path, *_args(stores)]) == 0
    best_path = tmp_path / "best.yaml"
    assert main(["export", path, "-o", str(best_path), "--storage", stores["storage"]]) == 0
    best = autolr.load_best(best_path)
    assert best.direction == "maximize" and 0.5 < best.value <= 1.0

    client, _, children = _runs(stores, "cnn")
    scale = (best.confirmed or {}).get("lr_scale")  # a step back: the export is what its confirmation runs trained
    if scale is None:
        run = next(r for r in children if r.data.tags["autolr.trial"] == str(best.trial))
    else:
        confirms = client.search_runs([client.get_experiment_by_name("cnn").experiment_id], f"tags.`autolr.lr_scale` = '{scale}'")
        run = next(r for r in confirms if r.data.tags["autolr.confirm_of"] == str(best.trial))
    logged = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]

    import torch

    task = __import__("my_cnn_task").make(channels=4)
    optimizer = best.build_optimizer(task.model.parameters())
    scheduler = best.build_scheduler(optimizer, best.total_steps)
    assert best.total_steps == 2 * 12
    rebuilt = []
    steps_per_epoch = best.total_steps // best.epochs
    val = iter(h.value for h in sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step))
    for step in range(best.total_steps):
        rebuilt.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if (step + 1) % steps_per_epoch == 0:
            scheduler.report(next(val))  # plateau needs the epoch's metric; the others ignore it
    assert rebuilt == pytest.approx(logged, rel=1e-6)
    assert isinstance(optimizer, torch.optim.Optimizer)


def test_bad_study_files_exit_2_with_one_line_and_write_nothing(write_study, tmp_path, capsys) -> None:
    cases = {
        "unknown key": "name: a\ntask: digits_mlp\nsearch: {lr: {low: 0.1, high: 1}}\nbogus: 1\n",
        "negative lr": "name: a\ntask: digits_mlp\nsearch: {lr: {low: -0.1, high: 1}}\n",
        "broken yaml": "name: a\ntask: [digits_mlp\n",
        "python tag": "name: !!python/object/apply:os.getcwd []\ntask: digits_mlp\n",
        "missing module": "name: a\ntask: 'missing_mod_xyz:make'\nsearch: {lr: {low: 0.1, high: 1}}\n",
        "dotdot name": "name: ../a\ntask: digits_mlp\nsearch: {lr: {low: 0.1, high: 1}}\n",
    }
    for label, text in cases.items():
        path = write_study(text, f"{label.replace(' ', '_')}.yaml")
        storage = f"sqlite:///{tmp_path / 'never.db'}"
        commands = [["tune", str(path), "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path / 'never_ml.db'}"]]
        if label != "missing module":  # read-only commands never import task code: for them the file is valid
            commands += [["export", str(path), "--storage", storage], ["show", str(path)]]
        for command in commands:
            assert main(command) == 2, label
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and err.startswith(f"autolr: error: {path}:"), (label, err)
            assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".yaml")) == []


def test_export_before_any_trial_says_what_to_do(write_study, stores, capsys) -> None:
    path = str(write_study(SMALL))
    assert main(["export", path, "--storage", stores["storage"]]) == 2
    assert "no study 'small'" in capsys.readouterr().err


def test_export_into_a_missing_folder_is_bad_input(write_study, stores, tmp_path, capsys) -> None:
    path = str(write_study(SMALL))
    assert main(["export", path, "-o", str(tmp_path / "missing" / "best.yaml"), "--storage", stores["storage"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autolr: error: -o {tmp_path / 'missing' / 'best.yaml'}: expected a file in an existing folder") and "\n" not in err
    assert main(["export", path, "-o", str(tmp_path), "--storage", stores["storage"]]) == 2
    assert capsys.readouterr().err.strip() == f"autolr: error: -o {tmp_path}: expected a file to write, got a folder"


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path) -> None:
    """``autolr show ... | head``: no BrokenPipeError line, the exit status a shell gives SIGPIPE; a
    BrokenPipeError from anything but standard output is an error like any other."""
    code = "import sys\nfrom autolr import cli\n" \
           "def long(args):\n    for _ in range(100_000): print('a row of the table ' * 4)\n    return 0\n" \
           "def other(args): raise BrokenPipeError(32, 'Broken pipe')\n" \
           "cli._COMMANDS['show'], cli._COMMANDS['export'] = long, other\n" \
           "raise SystemExit(cli.main([sys.argv[1], 'study.yaml']))\n"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, "show"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as head does once it has its lines
    assert (proc.wait(timeout=120), proc.stderr.read()) == (141, "")
    other = subprocess.run([sys.executable, "-c", code, "export"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and other.stderr.startswith("autolr: error: BrokenPipeError: ")


def test_a_storage_url_no_driver_takes_is_bad_input(write_study, capsys) -> None:
    path = str(write_study(SMALL))
    assert main(["show", path, "--storage", "foo://x"]) == 2
    err = capsys.readouterr().err
    assert "--storage foo://x: not a storage URL" in err and "Traceback" not in err


def test_ui_on_a_port_in_use_says_so_and_exits_2(capsys) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    assert f"127.0.0.1:{port} is not free" in capsys.readouterr().err


def test_optuna_logs_no_traceback_for_a_ctrl_c() -> None:
    import logging
    import sys

    from autolr.cli import _no_interrupt_traceback

    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = logging.LogRecord("optuna", logging.WARNING, "", 0, "Trial 3 failed", (), sys.exc_info())
    other = logging.LogRecord("optuna", logging.WARNING, "", 0, "Trial 4 failed because of the following error: ValueError()", (), None)
    assert not _no_interrupt_traceback(interrupted) and _no_interrupt_traceback(other)


def test_unreachable_tracking_server_fails_fast_before_any_trial(write_study, stores, capsys) -> None:
    path = str(write_study(SMALL))
    code = main(["tune", path, "--storage", stores["storage"], "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--tracking-uri http://127.0.0.1:9: no MLflow server answered" in err and "sqlite:///mlruns/mlflow.db" in err
    assert not Path(stores["storage"][len("sqlite:///") :]).exists()  # nothing started


def test_unknown_objective_metric_exits_2_before_any_store_exists(write_study, tmp_path, capsys) -> None:
    path = write_study("name: m\ntask: digits_mlp\nobjective: {metric: f1, direction: maximize}\nsearch: {lr: {low: 0.01, high: 0.1}}\n")
    stores = tmp_path / "stores"
    code = main(["tune", str(path), "--storage", f"sqlite:///{stores / 'o.db'}", "--tracking-uri", f"sqlite:///{stores / 'm.db'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"autolr: error: {path}: objective.metric: expected one of ['val_loss', 'val_accuracy'] (from task digits_mlp), got 'f1'"
    assert not stores.exists()


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_command_ends_without_teardown_after_atexit_handlers_and_flushed_output(tmp_path) -> None:
    done = _python(
        """
        import atexit, sys
        from autolr.workers import exit_without_teardown
        atexit.register(lambda: open("atexit-ran", "w").close())
        print("said", end="")  # buffered: a pipe is not a terminal
        sys.stderr.write("warned")
        exit_without_teardown(3)
        print("never")
        """,
        tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "said", "warned")
    assert (tmp_path / "atexit-ran").exists()


def test_the_command_exits_the_usual_way_while_a_thread_of_its_own_runs(tmp_path) -> None:
    done = _python(
        """
        import threading, time
        from autolr.workers import exit_without_teardown
        def late():
            time.sleep(0.5)
            open("thread-finished", "w").close()
        threading.Thread(target=late).start()
        exit_without_teardown(4)
        """,
        tmp_path,
    )
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "thread-finished").exists(), "the usual exit waits for a non-daemon thread"


def test_the_autolr_command_keeps_its_exit_code_and_output(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntask: nope\n")
    done = subprocess.run([sys.executable, "-m", "autolr.cli", "tune", str(bad)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "task:" in done.stderr and done.stderr.count("\n") == 1


def test_a_code_that_is_not_an_exit_status_exits_as_sys_exit_would(tmp_path) -> None:
    for code, status, stderr in (("None", 0, ""), ("'stopped: why'", 1, "stopped: why\n")):
        done = _python(f"from autolr.workers import exit_without_teardown\nexit_without_teardown({code})", tmp_path)
        assert (done.returncode, done.stderr) == (status, stderr)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--trials", "abc", "an integer >= 1"),
        ("--trials", "0", "an integer >= 1"),
        ("--seed", "-1", "an integer >= 0"),
        ("--timeout", "nan", "a number of seconds > 0"),
    ],
)
def test_a_bad_number_flag_is_one_line_saying_what_was_expected(capsys, flag, value, expected) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", QUICKSTART, flag, value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"autolr tune: error: argument {flag}: expected {expected}, got {value} (usage: autolr tune -h)"]


@pytest.mark.parametrize("argv", [["export", QUICKSTART, "--format", "toml"], ["tune"], ["bogus"], []])
def test_a_bad_flag_or_command_is_one_line(capsys, argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and ": error: " in err[0] and err[0].endswith(" -h)")


def test_a_library_that_prints_its_own_info_lines_is_not_printed_twice() -> None:
    """Lightning logs ``Trainer.fit stopped`` at INFO through its own handler; the CLI's root handler
    (there for autolr's and the libraries' warnings) printed every such line a second time."""
    code = "import logging\nfrom autolr import cli\ncli._quiet_libraries()\n" \
           "lib = logging.getLogger('somelib')\nlib.setLevel(logging.INFO)\nlib.addHandler(logging.StreamHandler())\n" \
           "lib.info('fit stopped')\nlogging.getLogger('autolr.x').warning('a warning')\n"  # fmt: skip
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    assert err.count("fit stopped") == 1 and "WARNING autolr.x: a warning" in err


def test_why_a_configuration_was_dropped_is_cut_with_an_ellipsis_in_the_table_and_whole_on_its_own_line() -> None:
    from autolr.cli import _confirmed
    from autolr.confirm import Confirmation

    why = "diverged: loss 10.77 is 14.7x the first step's at step 44"
    c = Confirmation(trial=1, single_seed_value=0.1, seeds=(), values=(), complete=False, dropped=why, lr_scale=0.49)
    assert _confirmed(c) == f"dropped ({why[:37]}...)" and len(_confirmed(c)) == len("dropped ()") + 40
    assert _confirmed(c, width=None) == f"dropped ({why})"


def test_a_worker_that_never_trained_is_said_beside_the_time_in_trials() -> None:
    from autolr.result import TuneResult

    result = TuneResult("s", "sqlite://", None, "minimize", "val_loss", None, [], trial_seconds=2.8, wall_seconds=8.5, jobs=2, processes=1)
    assert repr(result) == "TuneResult(study='s', 0 trials (none), no COMPLETE trial, parent_run_id=None)"
    assert result.timing() == [
        "time in trials: 2.8 s of 8.5 s x 2 workers since the first trial started (16%)",
        "1 of 2 workers trained: the others took longer to start (seconds: a new process imports torch) than the trials took to run; "
        "--jobs pays off when trials take longer than that",
    ]
    assert len(dataclasses.replace(result, processes=2).timing()) == 1


def test_a_study_that_stops_short_of_its_target_says_why(write_study, stores, capsys) -> None:
    path = str(write_study(SMALL))
    assert main(["tune", path, "--timeout", "0.001", *_args(stores)]) == 0  # the first trial still runs to its end
    out = capsys.readouterr().out
    assert ": --timeout 0.001 s ran out; re-run the same command to go on (confirmation runs once the target is reached)" in out


@pytest.mark.parametrize(("values", "why"), [((0.11, 0.11, 0.112), "better than the rate above it"), ((0.161, 0.15, 0.161), "a step back within 3%")])
def test_the_summary_says_why_a_step_back_was_exported(values, why: str) -> None:
    """A step back exported because it was better says so; the tolerance is named only where it decided."""
    from autolr.cli import _summary
    from autolr.confirm import Confirmation
    from autolr.result import TuneResult

    winner = Confirmation(3, 0.10, (1000, 2000, 3000), (0.16, 0.15, 0.16), True)
    back = Confirmation(3, 0.10, (1000, 2000, 3000), values, True, lr_scale=0.7, params={"lr": 0.07})
    line = _summary(TuneResult("s", "sqlite://", None, "minimize", "val_loss", None, [], None, [winner, back])).splitlines()[-1]
    assert line.startswith("winner on fresh seeds: trial 3 at 0.7x its lr (0.07)") and f"(exported; {why}" in line
