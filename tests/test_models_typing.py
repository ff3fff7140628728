"""The typed models make the same tables as the models built as classes inside ``_build``.

``tests/data/models_ddl.txt`` holds the DDL (tables, indexes, for SQLite and PostgreSQL) and
the Python-side column defaults of the models as they were before the columns moved into
typed mixins; the models built now must produce the same text, byte for byte. Regenerate
the file only for an intended schema change: ``python tests/test_models_typing.py > ...``.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateIndex, CreateTable

from flask_webpush_targeted import models
from flask_webpush_targeted.models import Models, endpoint_hash, get_models

EXPECTED = Path(__file__).parent / "data" / "models_ddl.txt"


def _default_of(column: sa.Column[Any]) -> str:
    """How a column's Python-side default reads: a constant, a function's name, or none."""
    default = column.default
    if default is None:
        return "none"
    arg = getattr(default, "arg", None)
    if callable(arg):
        # SQLAlchemy wraps a plain function to take the execution context: name the original
        return "callable " + getattr(arg, "__wrapped__", arg).__name__
    return f"scalar {arg!r}"


def ddl_text(db: SQLAlchemy) -> str:
    """The DDL of the extension's tables on ``db``, per dialect, then each column's default."""
    get_models(db)
    tables = db.metadata.sorted_tables
    parts: list[str] = []
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        parts.append(f"-- dialect {dialect.name}")
        for table in tables:
            parts.append(str(CreateTable(table).compile(dialect=dialect)).strip())
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    defaults = [f"{table.name}.{column.name}: {_default_of(column)}"
                for table in tables for column in table.columns]
    parts.append("-- python-side defaults\n" + "\n".join(defaults))
    return "\n\n".join(parts) + "\n"


def _declarative_db() -> SQLAlchemy:
    class Base(DeclarativeBase):
        pass

    return SQLAlchemy(model_class=Base)


@pytest.mark.parametrize("make_db", [_declarative_db, SQLAlchemy],
                         ids=["declarative-base", "default-model-class"])
def test_tables_are_the_same_as_before_typing(make_db: Any) -> None:
    assert ddl_text(make_db()) == EXPECTED.read_text(encoding="utf-8")


def test_models_build_on_two_dbs_in_one_process() -> None:
    """Constraints and indexes come fresh per db: a second host db gets its own tables."""
    first, second = _declarative_db(), _declarative_db()
    assert ddl_text(first) == ddl_text(second)
    a, b = get_models(first), get_models(second)
    assert a.Subscription is not b.Subscription
    assert a.Subscription.__table__ is not b.Subscription.__table__
    assert a.Subscription.__table__.metadata is first.metadata
    assert b.Delivery.__table__.metadata is second.metadata


def test_models_name_their_typed_mixins() -> None:
    """Each field of Models is the class of a typed mixin, which type checkers read."""
    assert typing.get_type_hints(Models) == {
        name: type[getattr(models, f"{name}Row")]
        for name in ("Subscription", "Consent", "Notification", "Delivery", "ApiKey",
                     "ApiRequest", "Stat", "Preference", "Audience", "AudienceMember",
                         "Conversion", "Event")
    }


def test_model_classes_combine_the_mixin_with_the_hosts_model() -> None:
    """A model is the host's db.Model with the mixin's columns, methods and constructor."""
    db = _declarative_db()
    m = get_models(db)
    assert issubclass(m.Subscription, models.SubscriptionRow)
    assert issubclass(m.Subscription, db.Model)
    assert m.Subscription.__name__ == "Subscription"
    assert m.Subscription.__doc__ == models.SubscriptionRow.__doc__
    sub = m.Subscription(user_id="7", revoked_at=None)
    sub.set_endpoint("https://fcm.googleapis.com/fcm/send/abc")
    assert (sub.user_id, sub.push_service, sub.active) == ("7", "fcm.googleapis.com", True)
    assert sub.endpoint_sha256 == endpoint_hash("https://fcm.googleapis.com/fcm/send/abc")
    with pytest.raises(TypeError):
        m.Subscription(no_such_column="x")


if __name__ == "__main__":
    sys.stdout.write(ddl_text(_declarative_db()))
