"""The bounds of what is stored and accepted: ids, times, pages."""

from __future__ import annotations

from datetime import UTC, datetime

#: the largest id an Integer primary key holds (PostgreSQL's int4)
MAX_ROW_ID = 2**31 - 1
#: send_at before this (or from LATEST on) is a mistake, and near the ends
#: of datetime's range adding a validity period or converting to UTC overflows
EARLIEST_SEND_AT = datetime(2000, 1, 1, tzinfo=UTC)
#: the largest id a BigInteger primary key holds (notifications, deliveries)
MAX_ID = 2**63 - 1
#: lists of the push API and the admin views: rows per page, and pages
MAX_PER_PAGE = 100
MAX_PAGE = 100_000
#: times from here on are refused: year 9999 leaves no room for a ttl to be added
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
