"""Cells safe to open in a spreadsheet: no text of a CSV export runs as a formula.

Device labels are typed by customers, reasons come from push services and click
actions from browsers: any of them may begin with ``=HYPERLINK(...)`` or ``@SUM(...)``,
which Excel, LibreOffice and Google Sheets would run on the administrator's machine.
OWASP's rule (CSV injection): a text cell that begins with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return gets a leading ``'``, which spreadsheets read as "text", and
fields with the separator, quotes or line breaks are quoted (the csv module does that).

Beyond OWASP's list: a line feed (spreadsheets treat it like a carriage return in a
quoted cell), and the full-width ``＝ ＋ － ＠``, which spreadsheets of East Asian
locales take as the ASCII signs when a cell is entered. Only text is touched: numbers
stay numbers, so a negative count in a numeric column is still a number.
"""

from __future__ import annotations

from collections.abc import Mapping

#: the first characters that make a spreadsheet read a cell as a formula
FORMULA_STARTS = frozenset("=+-@\t\r\n" "\uff1d\uff0b\uff0d\uff20")


def safe_cell(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula."""
    return "'" + text if text[:1] in FORMULA_STARTS else text


def safe_row(row: Mapping[str, object]) -> dict[str, object]:
    """A CSV row whose text cells are all ``safe_cell``; numbers and None as they are."""
    return {key: safe_cell(value) if isinstance(value, str) else value
            for key, value in row.items()}
