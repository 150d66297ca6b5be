"""The code's shape, as docs/search.md describes it: data flows one way (no import cycles, lazy imports
included), importing a module changes no environment variable, and the experiment folder's file names
are spelled in balm_tune/experiment.py alone."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from balm_tune import experiment

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "balm_tune")
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for package in PACKAGES
    for path in (ROOT / package).glob("*.py")
    if path.name != "__init__.py"
)


def _imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in its file (inside functions too; imports for type
    hints alone, under `if TYPE_CHECKING:`, are never executed and do not count)."""
    tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found |= {name for name in names if name in MODULES}
    return found - {module}


def test_no_module_imports_one_that_imports_it_back():
    graph = {module: _imports(module) for module in MODULES}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for module in MODULES if (cycle := cycle_from(module))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def test_importing_any_module_changes_no_environment_variable():
    """Settings such as Tune's TUNE_* are applied where Tune starts (balm_tune.tuner.build_tuner), not at import.
    Libraries set some of their own when imported (torch's inductor cache folder): a variable that no
    module of this project names is theirs."""
    script = (
        "import os, importlib, json\n"
        "before = dict(os.environ)\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "now = dict(os.environ)\n"
        "print(json.dumps(sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    changed = json.loads(run.stdout.strip().splitlines()[-1])
    source = "\n".join(path.read_text() for package in PACKAGES for path in (ROOT / package).glob("*.py"))
    ours = [name for name in changed if name in source]
    assert not ours, f"importing the project's modules set {ours}"


NAMES = [
    experiment.SPACE,
    experiment.JOURNAL,
    experiment.LEADERBOARD,
    experiment.BASELINES,
    experiment.SUMMARY,
    experiment.CONFIG,
    experiment.CHECKPOINT,
    experiment.INTEGRITY,
    experiment.TRIAL_RESULT,
]


@pytest.mark.parametrize("name", NAMES)
def test_only_the_experiment_module_spells_a_file_name_of_the_experiment_folder(name):
    spelled = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
        if path.name != "experiment.py" and _in_code(path, name)
    ]
    assert not spelled, f"{name!r} is spelled in {spelled}: use balm_tune.experiment"


def _in_code(path: Path, name: str) -> bool:
    """Whether a string constant of the module's code (docstrings aside) holds `name`."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and name in node.value
        and id(node) not in docstrings
        for node in ast.walk(tree)
    )
