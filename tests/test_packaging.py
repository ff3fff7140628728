"""The wheel ships every template and static file of the source tree, and builds
without setuptools' "Package would be ignored" warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "flask_webpush_targeted"
DATA_FOLDERS = ("templates", "static", "translations")


def data_files_on_disk() -> set[str]:
    """Every file under the package's template, static and translation folders, as wheel
    paths."""
    found = set()
    for folder in DATA_FOLDERS:
        for path in (ROOT / PACKAGE / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def build_wheel(tmp_path: Path) -> tuple[Path, str]:
    """Build the wheel from a copy of the source tree (no build/ left in the checkout)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / PACKAGE, source / PACKAGE, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    (wheel,) = out.glob("flask_webpush_targeted-*.whl")
    return wheel, log


def test_wheel_holds_every_template_and_static_file_without_warnings(tmp_path: Path) -> None:
    wheel, log = build_wheel(tmp_path)
    assert "would be ignored" not in log
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = data_files_on_disk()
    assert {f"{PACKAGE}/templates/webpush/optin.html", f"{PACKAGE}/templates/webpush/sw.js",
            f"{PACKAGE}/static/webpush/webpush.js"} <= expected
    assert any(name.startswith(f"{PACKAGE}/templates/webpush/admin/") for name in expected)
    # the compiled catalogs: an installed package speaks Polish without a build step
    assert f"{PACKAGE}/translations/pl/LC_MESSAGES/messages.mo" in expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    assert f"{PACKAGE}/py.typed" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
