"""GDPR: export and erase one user's data, through the API and the ``flask webpush`` CLI."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from agents import AGENTS, subscribe_with_agent
from conftest import (
    LoggedInClient,
    SendingHost,
    assert_no_secrets,
    browser_keys,
    make_subscription,
)
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_webpush_targeted import WebPush, signals
from flask_webpush_targeted.models import utcnow
from flask_webpush_targeted.platforms import PLATFORMS
from flask_webpush_targeted.worker import make_worker


def deliver(app: Flask, webpush: WebPush, title: str,
            targets: list[tuple[str, int]]) -> int:
    """Store a sent Notification with one Delivery per (user_id, subscription_id)."""
    m, db = webpush.models, webpush.db
    with app.app_context():
        users = sorted({u for u, _ in targets})
        n = m.Notification(payload={"title": title, "body": "b", "url": "/orders"},
                           targeting={"user_ids": users, "devices": "all"}, ttl=3600,
                           status="done", target_count=len(users), without_count=0,
                           users_without_devices=[], fanned_out_at=utcnow())
        db.session.add(n)
        db.session.flush()
        for user_id, sub_id in targets:
            db.session.add(m.Delivery(notification_id=n.id, subscription_id=sub_id,
                                      user_id=user_id, status="sent", status_code=201,
                                      attempts=1, sent_at=utcnow(), displayed_at=utcnow()))
        db.session.commit()
        return n.id


def rows(app: Flask, db: SQLAlchemy, table: str, **where: Any) -> list[tuple[Any, ...]]:
    """Every row of a table (optionally filtered on columns), read in a fresh session."""
    t = db.metadata.tables[table]
    query = sa.select(t).order_by(t.c.id)
    for column, value in where.items():
        query = query.where(t.c[column] == value)
    with app.app_context():
        return [tuple(r) for r in db.session.execute(query)]


def user_rows(app: Flask, db: SQLAlchemy, user_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {t: rows(app, db, t, user_id=user_id)
            for t in ("webpush_subscription", "webpush_consent", "webpush_delivery")}


# -- export --------------------------------------------------------------------------------


def test_export_holds_consents_devices_and_received_notifications_without_secrets(
        app: Flask, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    laptop, phone = make_subscription(), make_subscription()
    laptop_id = client.subscribe(laptop, device_label="Laptop").get_json()["id"]
    phone_id = client.subscribe(phone, device_label="Phone").get_json()["id"]
    client.delete(f"/webpush/subscriptions/{phone_id}")
    theirs = make_subscription()
    their_id = other_client.subscribe(theirs).get_json()["id"]
    deliver(app, webpush, "Your order shipped", [("1", laptop_id), ("2", their_id)])
    deliver(app, webpush, "Only for user 2", [("2", their_id)])

    with app.app_context():
        data = webpush.export_user("1")
    dump = json.dumps(data)
    assert_no_secrets(dump, laptop, phone, theirs)
    assert data["user_id"] == "1"
    assert [(d["id"], d["label"], d["push_service"]) for d in data["devices"]] == [
        (laptop_id, "Laptop", "fcm.googleapis.com"), (phone_id, "Phone", "fcm.googleapis.com")]
    assert data["devices"][1]["revoked_at"] and data["devices"][1]["revoked_reason"] == (
        "device_revoked")
    assert [(c["action"], c["device_id"], c["text_version"]) for c in data["consents"]] == [
        ("granted", laptop_id, "1"), ("granted", phone_id, "1"), ("withdrawn", phone_id, None)]
    assert all(c["notifications"] is (c["action"] == "granted") for c in data["consents"])
    [received] = data["notifications_received"]
    assert received["title"] == "Your order shipped" and received["device_id"] == laptop_id
    assert received["status"] == "sent" and received["sent_at"] and received["displayed_at"]
    assert "Only for user 2" not in dump


def test_export_of_an_unknown_user_is_empty(app: Flask, webpush: WebPush,
                                            client: LoggedInClient) -> None:
    client.subscribe(make_subscription())
    with app.app_context():
        assert webpush.export_user("404") == {"user_id": "404", "devices": [], "consents": [],
                                              "preferences": {}, "audiences": [],
                                              "notifications_received": [],
                                              "conversions": []}


# -- forget --------------------------------------------------------------------------------


def test_forget_user_deletes_only_that_users_subscriptions_consents_and_deliveries(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    mine = [client.subscribe(make_subscription()).get_json()["id"] for _ in range(2)]
    theirs = other_client.subscribe(make_subscription()).get_json()["id"]
    client.delete(f"/webpush/subscriptions/{mine[1]}")
    shared = deliver(app, webpush, "Sale", [("1", mine[0]), ("2", theirs)])
    deliver(app, webpush, "Yours", [("1", mine[0])])
    user2_before = user_rows(app, db, "2")
    notifications_before = rows(app, db, "webpush_notification")
    forgotten: list[dict[str, Any]] = []

    with signals.user_forgotten.connected_to(
            lambda sender, **kw: forgotten.append(kw), app), app.app_context():
        counts = webpush.forget_user("1")
    assert counts == {"deliveries": 2, "conversions": 0, "events": 0, "consents": 3,
                      "preferences": 0, "audiences": 0, "subscriptions": 2}
    assert forgotten == [{"user_id": "1", "counts": counts}]
    assert user_rows(app, db, "1") == {"webpush_subscription": [], "webpush_consent": [],
                                       "webpush_delivery": []}
    assert user_rows(app, db, "2") == user2_before
    # the notifications lose the user from their targeting, and nothing else
    targeting = db.metadata.tables["webpush_notification"].c.keys().index("targeting")
    assert [r[:targeting] + r[targeting + 1:] for r in rows(app, db, "webpush_notification")] == [
        r[:targeting] + r[targeting + 1:] for r in notifications_before]
    assert [r[targeting] for r in rows(app, db, "webpush_notification")] == [
        {"user_ids": ["2"], "devices": "all"}, {"user_ids": [], "devices": "all"}]
    assert [r[1] for r in rows(app, db, "webpush_delivery")] == [shared]
    with app.app_context():
        assert webpush.export_user("1")["devices"] == []


def test_forgetting_the_new_owner_of_a_moved_device_keeps_the_old_owners_history(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    sub = make_subscription()
    sid = client.subscribe(sub).get_json()["id"]
    old = deliver(app, webpush, "Before the move", [("1", sid)])
    assert other_client.subscribe({**sub, "keys": browser_keys()}).status_code == 201
    deliver(app, webpush, "After the move", [("2", sid)])

    with app.app_context():
        counts = webpush.forget_user("2")
    assert counts == {"deliveries": 1, "conversions": 0, "events": 0, "consents": 1,
                      "preferences": 0, "audiences": 0, "subscriptions": 1}
    assert rows(app, db, "webpush_subscription") == []
    Delivery, Consent = webpush.models.Delivery, webpush.models.Consent
    with app.app_context():
        d = db.session.scalars(sa.select(Delivery)).one()
        consents = db.session.execute(
            sa.select(Consent.user_id, Consent.action, Consent.reason, Consent.subscription_id)
            .order_by(Consent.id)).all()
        assert (d.user_id, d.notification_id, d.status) == ("1", old, "sent")
        # the erased device is gone from user 1's records too: no dangling id that a
        # future subscription could reuse
        assert d.subscription_id is None
        assert [tuple(c) for c in consents] == [("1", "granted", None, None),
                                                ("1", "withdrawn", "moved", None)]
        export = webpush.export_user("1")
    assert [(n["title"], n["device_id"]) for n in export["notifications_received"]] == [
        ("Before the move", None)]


def test_old_owners_history_never_points_at_a_later_device_that_reuses_the_erased_id(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    """User 2's device is erased; user 3 then subscribes: user 1's history does not point at
    user 3's new device (ids of deleted rows can be reused on SQLite)."""
    sub = make_subscription()
    sid = client.subscribe(sub).get_json()["id"]
    deliver(app, webpush, "Before the move", [("1", sid)])
    other_client.subscribe({**sub, "keys": browser_keys()})
    with app.app_context():
        webpush.forget_user("2")
    new_id = LoggedInClient(app, "3").subscribe(make_subscription()).get_json()["id"]
    with app.app_context():
        export = webpush.export_user("1")
    device_ids = [n["device_id"] for n in export["notifications_received"]]
    device_ids += [c["device_id"] for c in export["consents"]]
    assert device_ids == [None, None, None]
    assert new_id not in device_ids


# -- nothing of the person remains ----------------------------------------------------------

#: an id and a label found nowhere else, so that a scan of every cell can look for them
FORGOTTEN, LABEL = "customer-4711", "Anna's phone"


def every_text_cell(app: Flask, db: SQLAlchemy) -> Iterator[tuple[str, str, str]]:
    """(table, column, text) of every text and JSON cell of every webpush_ table."""
    with app.app_context():
        for table in db.metadata.sorted_tables:
            if not table.name.startswith("webpush_"):
                continue
            columns = [c for c in table.c if isinstance(c.type, (sa.String, sa.JSON))]
            for values in db.session.execute(sa.select(*columns)):
                for column, value in zip(columns, values, strict=True):
                    if value is not None:
                        text = value if isinstance(value, str) else json.dumps(
                            value, ensure_ascii=False)
                        yield table.name, column.name, text


def test_forget_user_leaves_neither_their_id_nor_their_label_in_any_table(
        sending: SendingHost) -> None:
    """Sent for real: a notification to a list of devices, one to everyone, one after the
    user's device was revoked (they are a user without devices), one still scheduled, and
    a click from their device; then erasure. Counts of the past stay, names go."""
    host, webpush = sending, sending.webpush
    ua, platform = AGENTS["chrome-android"]
    mine, endpoint = subscribe_with_agent(host, FORGOTTEN, ua, LABEL)
    theirs, _ = subscribe_with_agent(host, "2", AGENTS["firefox-linux"][0], "Laptop")

    def notify(users: list[str], **kw: Any) -> int:
        with host.app.app_context():
            return int(webpush.notify_users(users, title="Winter sale", **kw).id)

    def run_worker() -> None:
        make_worker(host.app, simple=True).work(burst=True)

    by_ids = notify([FORGOTTEN, "2"], devices=[mine, theirs])
    to_all = notify([FORGOTTEN, "2", "3"])
    later = notify(["2", FORGOTTEN], send_at=datetime.now(UTC) + timedelta(hours=1))
    run_worker()
    token = host.push_service.received_for(endpoint)[0].notification()["token"]
    address = "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))
    assert host.app.test_client().post(
        "/webpush/events", json={"token": token, "event": "clicked", "action": "open"},
        environ_base={"REMOTE_ADDR": address}).get_json() == {"counted": True}
    with host.app.app_context():
        webpush.store.revoke(FORGOTTEN, mine)
    without = notify([FORGOTTEN, "2"])
    run_worker()
    assert any(FORGOTTEN in text for _t, _c, text in every_text_cell(host.app, host.db))
    with host.app.app_context():
        before = {nid: webpush.stats(nid) for nid in (by_ids, to_all, without)}
    assert before[without]["users_without_devices"] == 1

    with host.app.app_context():
        webpush.forget_user(FORGOTTEN)

    left = [(t, c, text) for t, c, text in every_text_cell(host.app, host.db)
            if FORGOTTEN in text or LABEL in text]
    assert left == []
    N, S = webpush.models.Notification, webpush.models.Stat
    with host.app.app_context():
        notifications = {n.id: n for n in host.db.session.scalars(sa.select(N))}
        platforms = set(host.db.session.scalars(sa.select(S.key).where(S.dimension == "platform")))
        after = {nid: webpush.stats(nid) for nid in (by_ids, to_all, without)}
    assert notifications[by_ids].targeting == {"user_ids": ["2"], "devices": "ids",
                                               "subscription_ids": [theirs]}
    assert notifications[to_all].targeting["user_ids"] == ["2", "3"]
    assert notifications[to_all].users_without_devices == ["3"]
    assert notifications[without].users_without_devices == []
    # the anonymous figures of what happened stay as they were counted (the erased user's
    # unsent deliveries aside: none here); the scheduled one will not target them at all
    assert after == before
    assert (notifications[to_all].target_count, notifications[to_all].without_count) == (3, 1)
    assert (notifications[without].target_count, notifications[without].without_count) == (2, 1)
    assert notifications[later].targeting["user_ids"] == ["2"]
    assert notifications[later].target_count == 1
    assert platforms <= set(PLATFORMS) and platform in platforms


def test_forget_user_finds_ids_that_json_writes_with_escapes_or_not_as_ascii(
        app: Flask, db: SQLAlchemy, webpush: WebPush) -> None:
    """Ids that a plain text search could miss (escaped quotes, slashes, non-ASCII, the
    JSON escape of a quote) leave the lists all the same; a look-alike stays."""
    odd = ['say "hi"/\\n', "Zoë 🙂", "a\\u0022b", '"quoted"', "</script>&'"]
    m = webpush.models
    with app.app_context():
        ids = []
        for user_id in odd:
            n = m.Notification(payload={"title": "t"}, ttl=60, status="queued",
                               targeting={"user_ids": [user_id, "keep", user_id + "x"],
                                          "devices": "all"}, target_count=3)
            db.session.add(n)
            db.session.flush()
            ids.append(n.id)
        db.session.commit()
        for user_id in odd:
            webpush.forget_user(user_id)
        db.session.expire_all()
        assert [(n.targeting["user_ids"], n.target_count)
                for n in (db.session.get(m.Notification, i) for i in ids)] == [
            (["keep", u + "x"], 2) for u in odd]


def test_forget_user_works_beside_an_id_with_nul_stored_before_such_ids_were_refused(
        app: Flask, db: SQLAlchemy, webpush: WebPush) -> None:
    """PostgreSQL's json columns took "\\u0000", which jsonb refuses; SQLite's json functions
    cut strings at NUL when they rebuild an array. Neither stops the erasure or changes
    another id on SQLite; on PostgreSQL that undeliverable id keeps a U+FFFD instead."""
    m = webpush.models
    with app.app_context():
        n = m.Notification(payload={"title": "t"}, ttl=60, status="queued", target_count=3,
                           targeting={"user_ids": ["bad\x00id", FORGOTTEN, "2"],
                                      "devices": "all"})
        db.session.add(n)
        db.session.commit()
        webpush.forget_user(FORGOTTEN)
        db.session.expire_all()
        n = db.session.get(m.Notification, n.id)
        postgres = db.engine.dialect.name == "postgresql"
        assert n.targeting["user_ids"] == ["bad\ufffdid" if postgres else "bad\x00id", "2"]
        assert n.target_count == 2


# -- the CLI -------------------------------------------------------------------------------


def test_cli_export_user_prints_the_export_as_json(
        app: Flask, webpush: WebPush, client: LoggedInClient) -> None:
    sub = make_subscription()
    sid = client.subscribe(sub, device_label="Laptop").get_json()["id"]
    deliver(app, webpush, "Your order shipped", [("1", sid)])
    result = app.test_cli_runner().invoke(args=["webpush", "export-user", "1"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    with app.app_context():
        assert printed == webpush.export_user("1")
    assert printed["devices"][0]["label"] == "Laptop"
    assert printed["notifications_received"][0]["title"] == "Your order shipped"
    assert_no_secrets(result.output, sub)


def test_cli_forget_user_with_yes_deletes(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient,
        other_client: LoggedInClient) -> None:
    sid = client.subscribe(make_subscription()).get_json()["id"]
    other_client.subscribe(make_subscription())
    deliver(app, webpush, "Sale", [("1", sid)])
    user2_before = user_rows(app, db, "2")
    result = app.test_cli_runner().invoke(args=["webpush", "forget-user", "1", "--yes"])
    assert result.exit_code == 0, result.output
    assert ("1 deliveries, 0 conversions, 0 events, 1 consents, 0 preferences, 0 audiences, "
            "1 subscriptions deleted."
            in result.output)
    assert all(not r for r in user_rows(app, db, "1").values())
    assert user_rows(app, db, "2") == user2_before


def test_cli_forget_user_asks_and_answering_no_deletes_nothing(
        app: Flask, db: SQLAlchemy, webpush: WebPush, client: LoggedInClient) -> None:
    sid = client.subscribe(make_subscription()).get_json()["id"]
    deliver(app, webpush, "Sale", [("1", sid)])
    before = user_rows(app, db, "1")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["webpush", "forget-user", "1"], input="n\n")
    assert result.exit_code == 1
    assert "Erase every web push record of user '1'?" in result.output
    assert "Aborted" in result.output
    assert user_rows(app, db, "1") == before and all(before.values())
    result = runner.invoke(args=["webpush", "forget-user", "1"], input="y\n")
    assert result.exit_code == 0, result.output
    assert all(not r for r in user_rows(app, db, "1").values())
