"""The documentation keeps up with the code: every setting is documented."""

from __future__ import annotations

from pathlib import Path

from flask_webpush_targeted.config import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_has_a_row_in_docs_config() -> None:
    text = (DOCS / "config.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in text]
    assert not missing, f"docs/config.md lacks {missing}"
