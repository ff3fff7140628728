"""Reading an audience from a CSV or NDJSON stream, or from host code's iterable, row by row.

A file is read a line at a time (a line longer than MAX_LINE is refused, not buffered), so
its size never matters to memory. A row that cannot be a member is reported, not fatal;
only a file that is not the documented shape at all (a header naming a column that cannot
be a placeholder) is refused whole.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from .audiences import Row
from .exceptions import AudienceTooLarge, InvalidAudience, InvalidNotification, InvalidUserId
from .limits import MAX_ID
from .placeholders import NAME, check_vars
from .users import user_id_of

#: the longest line read as a row; a longer one is skipped as "too long"
MAX_LINE = 65_536
CSV_TYPES = ("text/csv",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line without its end, or None when too long); AudienceTooLarge
    once more than ``limit`` bytes were read."""
    total = number = 0
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return
        total += len(raw)
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, unread
                raw = stream.readline(MAX_LINE + 1)
                total += len(raw)
                if total > limit:
                    break
            if total > limit:
                raise AudienceTooLarge(f"The audience is over {limit:,} bytes "
                                       "(WEBPUSH_API_MAX_AUDIENCE_BYTES); nothing was stored.")
            yield number, None
            continue
        if total > limit:
            raise AudienceTooLarge(f"The audience is over {limit:,} bytes "
                                   "(WEBPUSH_API_MAX_AUDIENCE_BYTES); nothing was stored.")
        yield number, raw.rstrip(b"\r\n")


def _user_id(value: Any) -> tuple[str | None, str | None]:
    """(user id, None) or (None, why not)."""
    if isinstance(value, str) and value == "":
        return None, "empty"
    if isinstance(value, int) and not -MAX_ID - 1 <= value <= MAX_ID:
        return None, "integer out of the 64-bit range"
    if isinstance(value, str) and len(value) > 255:
        return None, "too long"
    if isinstance(value, str) and "\x00" in value:
        return None, "NUL character"
    try:
        return user_id_of(value), None
    except InvalidUserId:
        return None, "not a user id"


def _vars(values: Mapping[str, Any], where: str) -> tuple[dict[str, str] | None, str | None]:
    try:
        return check_vars(values, where) or None, None
    except InvalidNotification as exc:
        return None, str(exc).split(": ", 1)[-1]


def _records(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """CSV records: a line, or lines joined while a quoted cell is open (RFC 4180 lets a
    quoted cell hold a line break), at most MAX_LINE bytes; None for a longer one."""
    pending: list[bytes] = []
    first = 0
    for number, raw in _lines(stream, limit):
        if raw is None or (pending and sum(map(len, pending)) + len(raw) > MAX_LINE):
            # Too long: the record and what is left of its open cell are dropped together.
            yield (first or number), None
            pending = []
            continue
        if not pending:
            first = number
        pending.append(raw)
        joined = b"\n".join(pending)
        if b'"' not in raw and len(pending) == 1 or not _ends_in_quotes(joined):
            yield first, joined
            pending = []
    if pending:
        yield first, None  # a quote never closed: nothing after it can be trusted


def _ends_in_quotes(record: bytes) -> bool:
    """True when the record ends inside a quoted cell (RFC 4180: a cell that starts with
    a quote, "" for a quote inside it); a quote inside an unquoted cell is a character."""
    quoted, at_start = False, True
    i, size = 0, len(record)
    while i < size:
        c = record[i:i + 1]
        if quoted:
            if c == b'"':
                if record[i + 1:i + 2] == b'"':
                    i += 1
                else:
                    quoted = False
        elif at_start and c == b'"':
            quoted = True
        at_start = not quoted and c in (b",", b"\n")
        i += 1
    return quoted


def csv_rows(stream: IO[bytes], limit: int) -> Iterator[Row]:
    """Rows of a CSV file: one user id per line, or a header ``user_id,<var>,...``."""
    header: list[str] | None = None
    first = True
    for number, raw in _records(stream, limit):
        if raw is None:
            yield number, None, None, "too long, or a quote never closed"
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None, None, "not UTF-8"
            continue
        if first:
            text = text.removeprefix("\ufeff")
        if "\x00" in text:
            yield number, None, None, "NUL character"
            continue
        try:
            cells = next(csv.reader([text]), [])
        except csv.Error:
            yield number, None, None, "not CSV"
            continue
        if first:
            first = False
            if cells[:1] == ["user_id"]:
                header = cells
                bad = [c for c in cells[1:] if not NAME.fullmatch(c)]
                if bad or len(set(cells)) != len(cells):
                    raise InvalidAudience(
                        f"The header's columns after user_id name the vars: letters, digits "
                        f"and _, each once ({', '.join(repr(c[:40]) for c in bad) or 'repeated'}"
                        " cannot be).")
                continue
        if not cells or cells == [""]:
            yield number, None, None, "empty"
            continue
        user_id, why = _user_id(cells[0])
        if why is not None:
            yield number, None, None, why
            continue
        if header is None:
            if len(cells) > 1:
                yield number, None, None, "more than one column without a header naming them"
                continue
            yield number, user_id, None, None
            continue
        if len(cells) > len(header):
            yield number, None, None, "more columns than the header"
            continue
        # An empty cell is no value: a placeholder that needs it is then refused.
        values, why = _vars({k: v for k, v in zip(header[1:], cells[1:], strict=False) if v},
                            f"line {number}")
        yield number, user_id, values, why


def ndjson_rows(stream: IO[bytes], limit: int) -> Iterator[Row]:
    """Rows of an NDJSON file: ``{"user_id": ..., "<var>": ...}`` per line."""
    for number, raw in _lines(stream, limit):
        if raw is None:
            yield number, None, None, "too long"
            continue
        if not raw.strip():
            yield number, None, None, "empty"
            continue
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            yield number, None, None, "not JSON"
            continue
        if not isinstance(item, dict) or "user_id" not in item:
            yield number, None, None, "not an object with user_id"
            continue
        value = item.pop("user_id")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None or isinstance(value, (bool, float, list, dict)):
            yield number, None, None, "not a user id"
            continue
        user_id, why = _user_id(value)
        if why is not None:
            yield number, None, None, why
            continue
        values, why = _vars(item, f"line {number}")
        yield number, user_id, values, why


def iterable_rows(items: Iterable[Any]) -> Iterator[Row]:
    """Rows of host code's iterable: users, user ids, or {"user": ..., "vars": {...}};
    InvalidAudience at the first item that is none of them (nothing is stored)."""
    for index, item in enumerate(items):
        values = None
        if isinstance(item, Mapping):
            if set(item) - {"user", "vars"} or "user" not in item:
                raise InvalidAudience(f"item {index}: a mapping is {{'user': ..., 'vars': "
                                      "{...}}.")
            try:
                values = check_vars(item.get("vars") or {}, f"item {index}") or None
            except InvalidNotification as exc:
                raise InvalidAudience(str(exc)) from exc
            item = item["user"]
        try:
            user_id = user_id_of(item)
        except InvalidUserId as exc:
            raise InvalidAudience(f"item {index}: {exc}.") from exc
        yield index, user_id, values, None
