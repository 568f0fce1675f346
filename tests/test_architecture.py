"""The structure a newcomer relies on: layers that import downward, small modules, one home per key."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import autolr
from autolr import keys

PACKAGE = Path(autolr.__file__).parent
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every autolr module ``module`` imports, at any depth (functions included), except under
    ``if TYPE_CHECKING:`` (annotations only: the one place an upward import is allowed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node) for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(m, p, known) for m, p in modules.items()}
    for m in graph:  # importing a submodule runs its package's __init__ first: not an edge of the module's own
        graph[m].discard("autolr")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_between_autolr_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_500_lines() -> None:
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_heavy_dependencies_stay_in_their_layers() -> None:
    """The trainer never imports optuna or mlflow; only tracking imports mlflow."""
    modules = _modules()
    for module, path in modules.items():
        imported = _third_party(path)
        if not module.startswith("autolr.tracking"):
            assert "mlflow" not in imported, f"{module} imports mlflow (only autolr.tracking may)"
    for module in ("autolr.trainer", "autolr.guard", "autolr.batches", "autolr.schedules", "autolr.scheduler", "autolr.optimizers", "autolr.keys"):
        if module in modules:
            assert not {"optuna", "mlflow"} & _third_party(modules[module]), f"{module} imports optuna or mlflow"


def test_keys_module_imports_nothing_and_holds_distinct_names() -> None:
    assert not _imports("autolr.keys", _modules()["autolr.keys"], set(_modules())) - {"__future__"}
    names = {k: v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str) and v.startswith("autolr.")}
    assert len(set(names.values())) == len(names), "two constants share one key"


def test_every_autolr_key_is_defined_once_in_keys() -> None:
    """No ``"autolr.something"`` literal outside keys.py, except module names (imports, loggers)."""
    modules = set(_modules())
    offenders = []
    for module, path in _modules().items():
        if module == "autolr.keys":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"autolr\.[a-z_.{}]+", node.value):
                if node.value not in modules:
                    offenders.append(f"{module}: {node.value!r}")
    assert not offenders, f"autolr.* keys written as literals (define them in autolr/keys.py): {offenders}"


def test_val_metric_rule() -> None:
    assert keys.val_metric("accuracy") == "val_accuracy"
    assert keys.val_metric("val_loss") == "val_loss"
