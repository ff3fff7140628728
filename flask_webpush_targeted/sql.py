"""SQL that differs by dialect: upserts, and ``IN`` lists PostgreSQL prepares once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy


def dialect_of(db: SQLAlchemy) -> str:
    """``postgresql`` or ``sqlite``: the dialect of the session's database."""
    return str(db.session.get_bind().dialect.name)


# Any: PostgreSQL's and SQLite's Inserts are two classes whose on_conflict_* differ in
# their options; callers use the options both have.
def insert_for(db: SQLAlchemy, table: sa.Table) -> Any:
    """An INSERT of the session's dialect, with on_conflict_* support where it exists."""
    dialect = dialect_of(db)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"flask-webpush-targeted supports PostgreSQL and SQLite, "
                              f"not {dialect}")


def id_in(db: SQLAlchemy, column: sa.SQLColumnExpression[int],
          ids: list[int]) -> sa.ColumnElement[bool]:
    """``column IN ids``; on PostgreSQL ``= ANY(array)``: one parameter, so the statement's
    text is the same whatever the number of ids and is prepared once per connection."""
    if dialect_of(db) == "postgresql":
        return column == sa.any_(sa.bindparam("ids", ids, type_=postgresql.ARRAY(sa.BigInteger)))
    return column.in_(ids)


def rowcount(result: sa.Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (``Session.execute`` is typed as returning a
    ``Result``; for those statements it is a ``CursorResult``, which counts them)."""
    return int(cast("sa.CursorResult[Any]", result).rowcount)
