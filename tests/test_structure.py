"""The package's shape: the import-linter contracts hold, no import hides a cycle, and the
job names RQ stores resolve to the job functions."""

from __future__ import annotations

import ast
import importlib
import pathlib
import shutil
import subprocess
import sys

import flask_webpush_targeted
from flask_webpush_targeted import jobs
from flask_webpush_targeted.redis_queue import FAN_OUT, SEND_BATCH

PACKAGE = pathlib.Path(flask_webpush_targeted.__file__).parent
#: imports inside functions that are there for an optional dependency, not a cycle
LAZY = {("testing/__init__.py", ".firefox")}


def _function_level_imports() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom):
                    name = "." * node.level + (node.module or "")
                    if node.level or name.startswith("flask_webpush_targeted"):
                        found.append((path.relative_to(PACKAGE).as_posix(), name))
    return found


def test_no_module_of_the_package_is_imported_inside_a_function():
    assert [hit for hit in _function_level_imports() if hit not in LAZY] == []


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    assert lint, "lint-imports is missing: pip install -e '.[test]' installs import-linter"
    done = subprocess.run([lint, "--config", str(PACKAGE.parent / "setup.cfg")],
                          cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_job_names_rq_stores_are_the_job_functions():
    for name, func in ((FAN_OUT, jobs.fan_out), (SEND_BATCH, jobs.send_batch)):
        module, attribute = name.rsplit(".", 1)
        assert getattr(importlib.import_module(module), attribute) is func
