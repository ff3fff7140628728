"""The documentation keeps up with the code: every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

from flask_webpush_targeted.config import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_has_a_row_in_docs_config() -> None:
    text = (DOCS / "config.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in text]
    assert not missing, f"docs/config.md lacks {missing}"


ROOT = DOCS.parent

# Words that describe how the work was organised, not the project. DESIGN.md is matched
# in capitals only: docs/design.md is the design document that is in the repository.
PROCESS_WORDS = (
    re.compile(r"\bissue\s*#?\d", re.IGNORECASE),
    re.compile(r"\bsessions?\b", re.IGNORECASE),
    re.compile(r"this machine", re.IGNORECASE),
    re.compile(r"\bDESIGN\.md\b"),
    re.compile(r"\.\./shared"),
    re.compile(r"\bhelpers?\b", re.IGNORECASE),
    re.compile(r"\bmachines? of this project\b", re.IGNORECASE),
    re.compile(r"\b(?:this|the) project's (?:\S+ )?machines?\b", re.IGNORECASE),
    re.compile(r"\bproject's design document\b", re.IGNORECASE),
)

# "session" in its technical senses (Flask's session, pytest's session scope, a database
# session, a FirefoxSession object), which the docs must keep saying.
TECHNICAL_PHRASES = (
    'scope="session"',
    "as session:",
    "yield session",
    "session.log_path",
    "session.log_tail()",
    "once per session",
    "No cookie, session,",
    "the session's CSRF token",
    "made during a session",
    "kept in the session",
    "session cookie",
    "database session",
)


def _owned_docs() -> list[Path]:
    """The documents this test holds to describing the project only."""
    return [ROOT / "CHANGES.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]


def _process_words(text: str) -> list[str]:
    """Each process word in the text, with the technical phrases masked out."""
    text = " ".join(text.split())
    for phrase in TECHNICAL_PHRASES:
        text = text.replace(phrase, " ")
    return [m.group(0) for pattern in PROCESS_WORDS for m in pattern.finditer(text)]


def test_process_words_are_caught_and_technical_phrases_are_not() -> None:
    caught = [
        "as issue 7 asked",
        "see issue #12",
        "this session's machine",
        "over the Sessions",
        "measured on this machine",
        "the contract in DESIGN.md",
        "see ../shared/STYLE.md",
        "a helper measured it",
        "2-core machine of this project",
        "on this project's 2-core machines",
        "on the project's 2-core machine",
        "fixed by the project's design document",
    ]
    for sentence in caught:
        assert _process_words(sentence), sentence
    assert _process_words(" ".join(TECHNICAL_PHRASES) + " docs/design.md FirefoxSession") == []


def test_docs_describe_the_project_not_how_the_work_was_organised() -> None:
    found = {
        str(path.relative_to(ROOT)): words
        for path in _owned_docs()
        if (words := _process_words(path.read_text()))
    }
    assert not found, f"process words in the docs: {found}"
