"""`autolr compare`: one table of several studies' best configurations, overlays as PNGs, read-only."""

from __future__ import annotations

import warnings

import yaml

import autolr
from autolr.cli import main

STUDY = """
    name: {name}
    task: wine_mlp
    train: {{epochs: 2, batch_size: 64}}
    objective: {{metric: val_loss, direction: minimize}}
    trials: 3
    seed: {seed}
    sampler: random
    search:
      lr: {{low: 1.0e-3, high: 1.0e-1}}
      optimizer: {{adam: {{}}}}
      schedule: {{constant: {{}}}}
    pruning: {{divergence: true, curve: none}}
"""


def test_compare_two_studies_prints_one_table_and_writes_the_overlays(write_study, stores, tmp_path, capsys) -> None:
    paths = [write_study(STUDY.format(name=n, seed=s), f"{n}.yaml") for n, s in (("cmp-a", 0), ("cmp-b", 1))]
    for path in paths:
        autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"], progress=False)
    plots = tmp_path / "cmp"
    args = ["compare", *map(str, paths), "--plots", str(plots), "--storage", stores["storage"], "--tracking-uri", stores["tracking_uri"]]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["study", "metric", "direction", "value", "confirmed_mean"]
    assert [line.split()[0] for line in lines[2:]] == ["cmp-a", "cmp-b"]
    assert all(line.split()[4] != "-" for line in lines[2:])  # each study's confirmed mean
    for path, best in zip(paths, autolr.compare(paths, storage=stores["storage"], tracking_uri=None).studies):
        exported = yaml.safe_load(autolr.export_best(path, storage=stores["storage"]))  # compare's row is what the export names
        assert (best.trial, best.confirmed_mean, best.lr) == (exported["trial"], exported["value"], exported["params"]["lr"])
        assert best.value == exported["single_seed_value"] and exported["confirmed"] is not None
    assert sorted(p.name for p in plots.iterdir()) == ["best_learning_curves.png", "lr_vs_objective.png", "optimization_histories.png"]


def test_compare_names_the_same_limit_as_the_description(write_study, stores) -> None:
    path = write_study(STUDY.format(name="cmp-c", seed=0))
    autolr.tune(path, storage=stores["storage"], tracking_uri=None, progress=False)
    (best,) = autolr.compare([path], storage=stores["storage"], tracking_uri=None).studies
    assert best.limit is not None and best.limit.source.endswith("stable trials")


def test_compare_of_a_study_not_stored_is_an_error_and_creates_nothing(write_study, tmp_path, capsys) -> None:
    path = write_study(STUDY.format(name="cmp-none", seed=0))
    db = tmp_path / "none.db"
    assert main(["compare", str(path), "--storage", f"sqlite:///{db}"]) == 2
    assert not db.exists()


def test_the_optuna_storage_stays_readable_by_optuna_dashboard(write_study, stores) -> None:
    """`optuna-dashboard sqlite:///...` over autolr's storage: the study, its trials and their params load
    through the dashboard's own API (its WSGI app, as its command line serves it)."""
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    path = write_study(STUDY.format(name="cmp-dash", seed=0))
    autolr.tune(path, storage=stores["storage"], tracking_uri=None, progress=False)
    app = wsgi(stores["storage"])

    def get(url: str):
        environ, status = {"PATH_INFO": url, "REQUEST_METHOD": "GET"}, []
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (url, status, body[:500])
        return json.loads(body)

    studies = {s["study_name"]: s for s in get("/api/studies")["study_summaries"]}
    assert {"cmp-dash", "cmp-dash.confirm"} <= set(studies)  # the search and its confirmation runs
    detail = get(f"/api/studies/{studies['cmp-dash']['study_id']}")
    assert len(detail["trials"]) == 3
    assert all("lr" in {p["name"] for p in t["params"]} for t in detail["trials"])  # the searched rate, as Optuna stores it


def test_compare_against_another_mlflow_store_says_whose_curves_are_missing(write_study, stores, tmp_path, caplog) -> None:
    """Run from another folder, compare reads another (empty) MLflow store: the curves' plot says "no
    curves", and a warning names the study and the store, without matplotlib's own legend warning."""
    path = write_study(STUDY.format(name="cmp-d", seed=0))
    autolr.tune(path, storage=stores["storage"], tracking_uri=stores["tracking_uri"], progress=False)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    with caplog.at_level("WARNING"), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*No artists with labels")  # matplotlib's legend warning fails it
        result = autolr.compare([path], storage=stores["storage"], tracking_uri=elsewhere, plots_dir=tmp_path / "cmp")
    assert len(result.plots) == 3
    said = [r.getMessage() for r in caplog.records if "no curves in the MLflow store" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("study cmp-d: its best trial has no curves") and elsewhere in said[0]
