"""Attacks on audiences and per-recipient vars: each test names the behaviour expected, on
SQLite and PostgreSQL, with the real Redis, a real worker and the local push service."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from openapi_check import BASE

from flask_webpush_targeted.exceptions import InvalidNotification
from flask_webpush_targeted.push_api.keys import create_key


class Api:
    def __init__(self, host: SendingHost) -> None:
        self.http = host.app.test_client()
        with host.app.app_context():
            self.key = create_key(host.db, host.webpush.models, "crm", ["send", "stats"])[1]

    def upload(self, body: bytes, kind: str = "text/csv") -> Any:
        response = self.http.post(f"{BASE}/audiences?name=seg", data=body, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": kind})
        assert response.status_code < 500, response.get_data(as_text=True)
        return response


def members(host: SendingHost, audience_id: int) -> dict[str, Any]:
    AM = host.webpush.models.AudienceMember
    with host.app.app_context():
        return dict(host.db.session.execute(sa.select(AM.user_id, AM.vars)
                                            .where(AM.audience_id == audience_id)).all())


# -- uploads -------------------------------------------------------------------------------------


def test_a_quoted_csv_cell_with_a_line_break_never_makes_another_user_a_member(
        make_host: Any) -> None:
    """RFC 4180 lets a quoted cell hold a line break (a CRM's note, an address): read line
    by line, the cell's second line would become a member (user 2, with a var) who is not
    in the CRM's list. The record spans the lines instead."""
    host = make_host()
    api = Api(host)
    body = b'user_id,note\n1,"Dear customer,\n2,see you soon"\n3,plain\n'
    answer = api.upload(body).get_json()
    # User 2 is not in the CRM's list: it only appears inside user 1's note.
    assert "2" not in members(host, answer["id"])


# -- call-time checks an audience skips ------------------------------------------------------------


def test_an_audience_member_whose_title_is_blank_once_filled_is_refused_as_a_recipient_is(
        make_host: Any) -> None:
    """recipients= refuses a title blank once filled; an audience's summary check (the
    longest value fits) skips that check, and the member gets a notification with no title."""
    host = make_host()
    with host.app.app_context():
        with pytest.raises(InvalidNotification, match="empty once filled"):
            host.webpush.notify_users(recipients=[{"user": "1", "vars": {"name": " "}}],
                                      title="{name}")
        audience = host.webpush.create_audience([{"user": "1", "vars": {"name": " "}}],
                                                name="Blank")
        with pytest.raises(InvalidNotification, match="empty once filled"):
            host.webpush.notify_users(audience=audience.id, title="{name}")


def test_an_audience_url_longer_than_2048_characters_once_filled_is_refused(
        make_host: Any) -> None:
    """Percent-encoding makes "!" three characters: 700 of them fit the payload but make a
    URL of 2,101 characters, which recipients= refuses (check_url) and an audience does not."""
    host = make_host()
    value = "!" * 700
    with host.app.app_context():
        with pytest.raises(InvalidNotification, match="2048"):
            host.webpush.notify_users(recipients=[{"user": "1", "vars": {"p": value}}],
                                      title="t", url="/{p}")
        audience = host.webpush.create_audience([{"user": "1", "vars": {"p": value}}],
                                                name="Long URL")
        with pytest.raises(InvalidNotification, match="2048"):
            host.webpush.notify_users(audience=audience.id, title="t", url="/{p}")


# -- internal audiences and prune ------------------------------------------------------------------


def test_pruning_an_old_notification_keeps_a_waiting_notifications_recipients_vars(
        make_host: Any, push_service: Any) -> None:
    """SQLite reuses the id of a deleted row: the internal audience of an old, fanned-out
    notification is deleted at fan-out and the next one takes its id; prune then deletes
    by the old notification's audience_id, and the waiting notification's vars go."""
    host = make_host()
    sub = host.subscribe("1")
    N = host.webpush.models.Notification
    with host.app.app_context():
        old = host.webpush.notify_users(recipients=[{"user": "1", "vars": {"gate": "A1"}}],
                                        title="Gate {gate}").id
    host.run_worker()
    with host.app.app_context():
        host.db.session.execute(sa.update(N).where(N.id == old).values(
            finished_at=datetime.now(UTC) - timedelta(days=60)))
        host.db.session.commit()
        new = host.webpush.notify_users(recipients=[{"user": "1", "vars": {"gate": "B7"}}],
                                        title="Gate {gate}").id
        host.webpush.prune(timedelta(days=30))
    host.run_worker()
    titles = [p.notification()["title"] for p in push_service.received_for(sub.endpoint)]
    assert titles == ["Gate A1", "Gate B7"], (old, new, host.notification(old).audience_id,
                                              host.notification(new).audience_id)


# -- erase -----------------------------------------------------------------------------------------


def test_forget_user_before_the_fan_out_leaves_nothing_of_a_recipient_or_member(
        make_host: Any, push_service: Any) -> None:
    host = make_host()
    host.subscribe("1")
    two = host.subscribe("2")
    m = host.webpush.models
    with host.app.app_context():
        audience = host.webpush.create_audience(
            [{"user": "1", "vars": {"seat": "1A"}}, {"user": "2", "vars": {"seat": "2B"}}],
            name="Flight")
        by_audience = host.webpush.notify_users(audience=audience.id, title="Seat {seat}").id
        by_recipients = host.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"seat": "1A"}},
                        {"user": "2", "vars": {"seat": "2B"}}],
            title="Seat {seat}").id
        host.webpush.forget_user("1")
        assert [host.webpush.get_notification(i).target_count
                for i in (by_audience, by_recipients)] == [1, 1]
    host.run_worker()
    with host.app.app_context():
        left = host.db.session.scalar(sa.select(sa.func.count()).select_from(m.AudienceMember)
                                      .where(m.AudienceMember.user_id == "1"))
        assert left == 0
        for nid in (by_audience, by_recipients):
            n = host.webpush.get_notification(nid)
            assert '"1"' not in json.dumps([n.targeting, n.users_without_devices])
            assert host.webpush.stats(nid)["sent"] == 1
    assert [p.notification()["title"] for p in push_service.received_for(two.endpoint)] == [
        "Seat 2B", "Seat 2B"]
    assert {d.user_id for nid in (by_audience, by_recipients) for d in host.deliveries(nid)} == {
        "2"}



def test_replaying_an_idempotent_recipients_request_stores_one_internal_audience(
        make_host: Any) -> None:
    host = make_host()
    api = Api(host)
    body = {"recipients": [{"user_id": "1", "vars": {"gate": "4"}}], "title": "Gate {gate}"}
    headers = {"Authorization": f"Bearer {api.key}", "Idempotency-Key": "k1"}
    first = api.http.post(f"{BASE}/notifications", json=body, headers=headers)
    again = api.http.post(f"{BASE}/notifications", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200) or (
        first.get_json()["id"] == again.get_json()["id"]), (first.data, again.data)
    with host.app.app_context():
        host.webpush.notify_users(recipients=[{"user": "1", "vars": {"gate": "4"}}],
                                  title="Gate {gate}", idempotency_key="lib")
        host.webpush.notify_users(recipients=[{"user": "1", "vars": {"gate": "4"}}],
                                  title="Gate {gate}", idempotency_key="lib")
        m = host.webpush.models
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(m.Audience)) == 2


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/audiences?name=seg", {"data": b"", "content_type": "text/csv"}),
    ("POST", "/audiences?name=seg", {"data": b"user_id,gate\n", "content_type": "text/csv"}),
    ("POST", "/audiences?name=seg", {"data": b"\n\n\r\n", "content_type": "application/x-ndjson"}),
    ("POST", "/audiences?name=seg", {"data": b"1\n", "content_type": "text/csv; charset=latin-1"}),
    ("POST", "/audiences?name=" + "x" * 201, {"data": b"1\n", "content_type": "text/csv"}),
    ("POST", "/audiences?name=%00", {"data": b"1\n", "content_type": "text/csv"}),
    ("POST", "/audiences?name=%ED%A0%80", {"data": b"1\n", "content_type": "text/csv"}),
    ("POST", "/audiences?name=seg", {"data": b'{"user_id": "1", "' + b"k" * 70 + b'": 1}\n',
                                     "content_type": "application/x-ndjson"}),
    ("POST", "/audiences?name=seg", {"data": b"[" * 100_000,
                                     "content_type": "application/x-ndjson"}),
    ("POST", "/audiences?name=seg", {"data": b"user_id," + ",".join(
        f"v{i}" for i in range(60)).encode() + b"\n1," + b",".join(b"x" for _ in range(60)),
        "content_type": "text/csv"}),
    ("GET", "/audiences/0", {}), ("GET", "/audiences/abc", {}), ("GET", "/audiences/%C2%B2", {}),
    ("GET", "/audiences/99999999999", {}), ("GET", "/audiences/2147483647", {}),
    ("DELETE", "/audiences/2147483648", {}), ("DELETE", "/audiences/-1", {}),
    ("POST", "/notifications", {"json": {"audience_id": 0, "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": 2**31, "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": 2**63, "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": "1", "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": True, "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": 1.5, "title": "t"}}),
    ("POST", "/notifications", {"json": {"audience_id": None, "title": "t"}}),
    ("POST", "/notifications", {"json": {"recipients": None, "title": "t"}}),
    ("POST", "/notifications", {"json": {"recipients": [{"user_id": "1", "vars": []}],
                                         "title": "t"}}),
    ("POST", "/notifications", {"json": {"recipients": [{"user_id": "1", "vars": {"a": {}}}],
                                         "title": "{a}"}}),
    ("POST", "/notifications", {"json": {"recipients": [{"user_id": "\ud800"}], "title": "t"}}),
    ("POST", "/notifications", {"json": {"user_ids": ["1"], "vars": {"a": "\ud800"},
                                         "title": "{a}"}}),
    ("POST", "/notifications", {"json": {"user_ids": ["1"], "vars": [], "title": "t"}}),
    ("POST", "/notifications", {"json": {"user_ids": ["1"], "vars": {"a": 10**400},
                                         "title": "{a}"}}),
    ("POST", "/notifications", {"json": {"user_ids": ["1"], "vars": {"a": "x"},
                                         "title": "{a:{a}}"}}),
])
def test_odd_audience_and_vars_requests_get_a_documented_4xx_or_2xx(
        make_host: Any, method: str, path: str, kwargs: dict[str, Any]) -> None:
    from openapi_check import check_answer

    host = make_host()
    api = Api(host)
    response = api.http.open(f"{BASE}{path}", method=method,
                             headers={"Authorization": f"Bearer {api.key}"}, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)
    check_answer(method, f"{BASE}{path.split('?')[0]}", response)


def test_audience_list_prints_one_line_per_audience_whatever_its_name(make_host: Any) -> None:
    """The list is tab-separated, a line an audience; a name with a line break or a tab (the
    push API takes any storable text as ?name=) forges another row."""
    host = make_host()
    api = Api(host)
    response = api.http.post(f"{BASE}/audiences?name=Mine%0A999%09800000%092026-01-01%2000:00"
                             "%09VIP", data=b"1\n", headers={
                                 "Authorization": f"Bearer {api.key}",
                                 "Content-Type": "text/csv"})
    assert response.status_code in (201, 422), response.get_data(as_text=True)
    listed = host.app.test_cli_runner().invoke(args=["webpush", "audience", "list"])
    assert all(len(line.split("\t")) == 4 for line in listed.output.splitlines())
    assert len(listed.output.splitlines()) == (1 if response.status_code == 201 else 0)
