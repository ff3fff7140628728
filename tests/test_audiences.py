"""Audiences: a CRM's segment uploaded once (CSV or NDJSON, streamed) and sent to as one
notification, on SQLite and PostgreSQL with the real Redis, a real `flask webpush worker`
and the local push service."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from openapi_check import BASE, check_answer

from flask_webpush_targeted.exceptions import (
    AudienceInUse,
    AudienceNotFound,
    InvalidAudience,
    InvalidNotification,
    PayloadTooLarge,
)
from flask_webpush_targeted.push_api.keys import create_key


class Api:
    """The push API of a host, with a key of the send scope."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.http = host.app.test_client()
        with host.app.app_context():
            self.key = create_key(host.db, host.webpush.models, "crm", ["send", "stats"])[1]

    def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        response = self.http.open(f"{BASE}{path}", method=method, headers=headers, **kw)
        assert response.status_code < 500, response.get_data(as_text=True)
        check_answer(method, f"{BASE}{path}", response)
        return response

    def upload(self, body: bytes, kind: str = "text/csv",
               name: str = "segment") -> Any:
        return self.call("POST", f"/audiences?name={name}", data=body,
                         headers={"Content-Type": kind})


def members(host: SendingHost, audience_id: int) -> dict[str, Any]:
    AM = host.webpush.models.AudienceMember
    with host.app.app_context():
        return dict(host.db.session.execute(sa.select(AM.user_id, AM.vars)
                                            .where(AM.audience_id == audience_id)).all())


def table_counts(host: SendingHost) -> tuple[int, int]:
    m = host.webpush.models
    with host.app.app_context():
        return tuple(host.db.session.scalar(sa.select(sa.func.count()).select_from(t))
                     for t in (m.Audience, m.AudienceMember))  # type: ignore[return-value]


# -- storing -------------------------------------------------------------------------------------


def test_create_audience_reads_a_generator_in_chunks_in_bounded_memory(make_host: Any) -> None:
    host = make_host()

    def ids() -> Iterator[str]:
        for i in range(60_000):
            yield f"user-{i}"
        yield "user-5"  # a repeat counts once

    tracemalloc.start()
    with host.app.app_context():
        audience = host.webpush.create_audience(ids(), name="Everyone")
        size, audience_id = audience.size, audience.id
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert size == 60_000
    assert len(members(host, audience_id)) == 60_000
    # A chunk of 1,000 ids at a time: a few MB, where 60,000 ORM rows would be far more.
    assert peak < 12_000_000, peak


def test_create_audience_takes_users_ids_and_vars_and_refuses_the_rest(make_host: Any) -> None:
    class User:
        def get_id(self) -> str:
            return "u1"

    host = make_host()
    with host.app.app_context():
        audience = host.webpush.create_audience(
            [User(), 2, {"user": "3", "vars": {"gate": "12", "row": 7}}], name="Mixed")
        assert (audience.size, audience.var_names, audience.var_lengths) == (
            3, [], {"gate": 2, "row": 1})
        audience_id = audience.id
        before = table_counts(host)
        for bad in (["ok", None], ["ok", {"user": "1", "vars": {"0x": "1"}}], "abc", [{"u": 1}]):
            with pytest.raises(InvalidAudience):
                host.webpush.create_audience(bad, name="Bad")
            host.db.session.rollback()
        with pytest.raises(InvalidAudience, match="name"):
            host.webpush.create_audience(["1"], name="")
        assert table_counts(host) == before  # a refused audience stores nothing
    assert members(host, audience_id) == {"u1": None, "2": None, "3": {"gate": "12", "row": "7"}}


def test_a_csv_upload_with_vars_reports_its_rejected_rows(make_host: Any) -> None:
    host = make_host()
    api = Api(host)
    body = (b"\xef\xbb\xbfuser_id,gate,seat\r\n1042,12,14C\r\n1043,12,\r\n\r\n1042,9,9Z\r\n"
            + b"x" * 300 + b",1,1\n" + b"bad\xff,1,1\n" + b"nul\x00,1,1\n1044,1,2,3\n1045,7,1A")
    response = api.upload(body)
    assert response.status_code == 201
    answer = response.get_json()
    assert (answer["size"], answer["vars"]) == (3, ["gate", "seat"])
    assert answer["rejected"]["duplicates"] == 1
    assert [(r["line"], r["reason"]) for r in answer["rejected"]["first"]] == [
        (4, "empty"), (6, "too long"), (7, "not UTF-8"), (8, "NUL character"),
        (9, "more columns than the header")]
    assert answer["rejected"]["count"] == 5
    # An empty cell is no value: 1043 has a gate and no seat.
    assert members(host, answer["id"]) == {
        "1042": {"gate": "12", "seat": "14C"}, "1043": {"gate": "12"},
        "1045": {"gate": "7", "seat": "1A"}}
    assert response.headers["Location"].endswith(f"/audiences/{answer['id']}")
    got = api.call("GET", f"/audiences/{answer['id']}").get_json()
    assert got == {k: v for k, v in answer.items() if k != "rejected"}


def test_an_ndjson_upload_carries_vars_and_reports_bad_lines(make_host: Any) -> None:
    host = make_host()
    api = Api(host)
    lines = [{"user_id": "a", "gate": "12", "seat": "1A"}, {"user_id": 77, "gate": 3},
             "not json", {"gate": "1"}, {"user_id": "b", "gate": None}, {"user_id": True},
             {"user_id": "c", "bad name": "1"}, [1, 2], {"user_id": 2**70}]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()
    answer = api.upload(body, "application/x-ndjson").get_json()
    assert answer["size"] == 2
    assert [r["reason"] for r in answer["rejected"]["first"]] == [
        "not JSON", "not an object with user_id", "vars['gate'] must be a string or a number.",
        "not a user id", "'bad name' is not a var name (letters, digits and _, not "
        "starting with a digit, at most 64).", "not an object with user_id",
        "integer out of the 64-bit range"]
    assert members(host, answer["id"]) == {"a": {"gate": "12", "seat": "1A"}, "77": {"gate": "3"}}


def test_an_upload_over_the_limit_is_refused_and_stores_nothing(make_host: Any) -> None:
    host = make_host(WEBPUSH_API_MAX_AUDIENCE_BYTES=50_000)
    api = Api(host)
    before = table_counts(host)
    body = "".join(f"{i}\n" for i in range(20_000)).encode()  # 108,890 bytes
    declared = api.upload(body)
    assert declared.status_code == 413
    assert "nothing was stored" in declared.get_json()["message"]

    # No Content-Length (chunked, as a server marks it): counted as it is read.
    chunked = api.call("POST", "/audiences?name=big", input_stream=io.BytesIO(body),
                       headers={"Content-Type": "text/csv"},
                       environ_overrides={"wsgi.input_terminated": True})
    assert chunked.status_code == 413
    assert table_counts(host) == before


def test_a_header_that_cannot_name_vars_is_refused_whole(make_host: Any) -> None:
    host = make_host()
    api = Api(host)
    for header in (b"user_id,1st\n1\n", b"user_id,gate,gate\n1,2,3\n", b"user_id,a b\n1,2\n"):
        response = api.upload(header)
        assert response.status_code == 422, header
        assert response.get_json()["error"] == "invalid_audience"
    assert api.upload(b"1\n", kind="text/plain").status_code == 400
    assert api.call("POST", "/audiences", data=b"1\n",
                    headers={"Content-Type": "text/csv"}).status_code == 400  # no name
    assert table_counts(host) == (0, 0)


# -- sending -------------------------------------------------------------------------------------


def test_one_notification_to_an_uploaded_audience_fills_each_members_vars(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_BATCH_SIZE=50)
    api = Api(host)
    subs = {str(i): host.subscribe(str(i)) for i in range(120)}
    rows = "".join(f"{i},{i % 9 + 1},{i + 1}A\n" for i in range(125))  # 120..124: no device
    answer = api.upload(f"user_id,gate,seat\n{rows}".encode()).get_json()
    sent = api.call("POST", "/notifications", json={
        "audience_id": answer["id"], "title": "Flight {flight}: gate {gate}",
        "body": "Seat {seat}", "vars": {"flight": "LO123"}})
    assert sent.status_code == 202
    accepted = sent.get_json()
    assert (accepted["targeted_users"], accepted["users_without_devices"]) == (125, None)
    host.run_worker(timeout=120)
    for i in range(120):
        [push] = push_service.received_for(subs[str(i)].endpoint)
        assert push.notification()["title"] == f"Flight LO123: gate {i % 9 + 1}"
        assert push.notification()["body"] == f"Seat {i + 1}A"
    with host.app.app_context():
        figures = host.webpush.stats(accepted["id"])
        n = host.webpush.get_notification(accepted["id"])
        assert (figures["sent"], figures["users_without_devices"]) == (120, 5)
        assert n.users_without_devices == ["120", "121", "122", "123", "124"]
    # Sent to: the audience can go now, the notification's figures stay.
    assert api.call("DELETE", f"/audiences/{answer['id']}").status_code == 204
    assert api.call("GET", f"/audiences/{answer['id']}").status_code == 404
    assert api.call("GET", f"/notifications/{accepted['id']}").get_json()["stats"]["sent"] == 120


def test_an_audience_without_vars_sends_texts_as_written(
        make_host: Any, push_service: Any) -> None:
    host = make_host()
    a, b = host.subscribe("a"), host.subscribe("b")
    with host.app.app_context():
        audience = host.webpush.create_audience(["a", "b", "nobody"], name="Plain")
        n = host.webpush.notify_users(audience=audience.id, title="50% {off}", devices="latest")
        assert n.target_count == 3
    host.run_worker()
    assert [p.notification()["title"] for s in (a, b)
            for p in push_service.received_for(s.endpoint)] == ["50% {off}", "50% {off}"]


def test_a_member_without_a_needed_var_is_refused_at_call_time_naming_it(
        make_host: Any) -> None:
    host = make_host()
    with host.app.app_context():
        audience = host.webpush.create_audience(
            [{"user": "1", "vars": {"gate": "1"}}, {"user": "2", "vars": {"seat": "2A"}}],
            name="Half")
        with pytest.raises(InvalidNotification,
                           match=rf"audience {audience.id}, user '2': no value for the "
                                 r"placeholder \{gate\}"):
            host.webpush.notify_users(audience=audience.id, title="Gate {gate}")
        # The notification's vars fill what a member lacks.
        n = host.webpush.notify_users(audience=audience.id, title="Gate {gate}",
                                      vars={"gate": "TBA"})
        assert n.vars == {"gate": "TBA"}


def test_an_oversized_member_is_refused_naming_it(make_host: Any) -> None:
    host = make_host()
    with host.app.app_context():
        audience = host.webpush.create_audience(
            [{"user": "fine", "vars": {"note": "ok"}},
             {"user": "huge", "vars": {"note": "é" * 1000}}], name="Notes")
        with pytest.raises(PayloadTooLarge, match=rf"audience {audience.id}, user 'huge'"):
            host.webpush.notify_users(audience=audience.id, title="t", body="{note}" * 3)
        # With room at the longest value, no member is read: it is accepted.
        host.webpush.notify_users(audience=audience.id, title="t", body="{note}")


def test_notify_users_refuses_an_unknown_or_empty_audience_and_device_lists(
        make_host: Any) -> None:
    host = make_host()
    with host.app.app_context():
        empty = host.webpush.create_audience([], name="Nobody")
        full = host.webpush.create_audience(["1"], name="One")
        for audience, devices, message in ((empty.id, "all", "no members"),
                                           (999_999, "all", "No audience has id 999999"),
                                           (2**40, "all", "No audience"),
                                           (full.id, [1], "'all' or 'latest' with an audience")):
            with pytest.raises(InvalidNotification, match=message):
                host.webpush.notify_users(audience=audience, title="t", devices=devices)


def test_an_audience_waiting_to_be_read_cannot_be_deleted(make_host: Any) -> None:
    from datetime import UTC, datetime, timedelta

    host = make_host()
    with host.app.app_context():
        audience = host.webpush.create_audience(["1", "2"], name="Later")
        n = host.webpush.notify_users(audience=audience.id, title="t",
                                      send_at=datetime.now(UTC) + timedelta(hours=1))
        with pytest.raises(AudienceInUse, match=f"Notification {n.id}"):
            host.webpush.delete_audience(audience.id)
        host.webpush.cancel(n.id)
        host.webpush.delete_audience(audience.id)
        with pytest.raises(AudienceNotFound):
            host.webpush.get_audience(audience.id)


def test_forget_user_leaves_no_audience_membership_behind(make_host: Any) -> None:
    from datetime import UTC, datetime, timedelta

    host = make_host()
    host.subscribe("17")
    with host.app.app_context():
        one = host.webpush.create_audience([{"user": "17", "vars": {"seat": "14C"}}, "18"],
                                           name="A")
        two = host.webpush.create_audience(["17"], name="B")
        later = host.webpush.notify_users(audience=one.id, title="t",
                                          send_at=datetime.now(UTC) + timedelta(hours=1))
        export = host.webpush.export_user("17")
        assert export["audiences"] == [
            {"audience_id": one.id, "name": "A", "vars": {"seat": "14C"}},
            {"audience_id": two.id, "name": "B", "vars": {}}]
        counts = host.webpush.forget_user("17")
        assert counts["audiences"] == 2
        assert host.webpush.export_user("17")["audiences"] == []
        assert (host.webpush.get_audience(one.id).size,
                host.webpush.get_audience(two.id).size) == (1, 0)
        # Not fanned out yet: the erased user is not targeted any more.
        assert host.webpush.get_notification(later.id).target_count == 1
    assert "17" not in members(host, one.id)
    AM = host.webpush.models.AudienceMember
    with host.app.app_context():
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(AM)
                                      .where(AM.user_id == "17")) == 0


def test_forget_user_named_like_a_device_word_keeps_an_audience_notification_whole(
        make_host: Any) -> None:
    """The erase searches notifications' JSON for the id's text: "all" is also the devices
    word of an audience notification's targeting, which has no user_ids list to shorten."""
    from datetime import UTC, datetime, timedelta

    host = make_host()
    with host.app.app_context():
        audience = host.webpush.create_audience(["x", "y"], name="Words")
        n = host.webpush.notify_users(audience=audience.id, title="t",
                                      send_at=datetime.now(UTC) + timedelta(hours=1))
        host.webpush.forget_user("all")
        stored = host.webpush.get_notification(n.id)
        assert (stored.target_count, stored.targeting) == (
            2, {"audience_id": audience.id, "devices": "all"})


def test_the_cli_creates_lists_and_deletes_audiences(make_host: Any, tmp_path: Any) -> None:
    host = make_host()
    runner = host.app.test_cli_runner()
    ids = tmp_path / "ids.ndjson"
    ids.write_text('{"user_id": "1", "gate": "4"}\n{"user_id": "2"}\n\n', encoding="utf-8")
    done = runner.invoke(args=["webpush", "audience", "create", "--name", "Gate 4",
                               "--file", str(ids)])
    assert done.exit_code == 0, done.output
    assert "2 member(s) (vars: gate); 1 row(s) rejected, 0 duplicate(s)." in done.output
    assert "line 3: empty" in done.output
    listed = runner.invoke(args=["webpush", "audience", "list"])
    [line] = listed.output.splitlines()
    audience_id, size, _created, name = line.split("\t")
    assert (size, name) == ("2", "Gate 4")
    csv = io.BytesIO(b"user_id\n9\n")
    stdin = runner.invoke(args=["webpush", "audience", "create", "--name", "In", "--file", "-"],
                          input=csv)
    assert "1 member(s)" in stdin.output
    sent = runner.invoke(args=["webpush", "send", "--audience", audience_id, "--title",
                               "Gate {gate} for {who}", "--var", "who=you", "--var", "gate=TBA"])
    assert sent.exit_code == 0, sent.output
    assert "for 2 user(s)" in sent.output and "known once the worker" in sent.output
    refused = runner.invoke(args=["webpush", "audience", "delete", audience_id])
    assert refused.exit_code == 1 and "has not read it yet" in refused.output
    assert runner.invoke(args=["webpush", "audience", "delete", "999"]).exit_code == 1


def test_staff_see_the_audience_and_the_placeholders_on_the_notification_page(
        make_host: Any, push_service: Any) -> None:
    from conftest import admin_http

    host = make_host()

    host.subscribe("1")
    with host.app.app_context():
        audience = host.webpush.create_audience([{"user": "1", "vars": {"seat": "14C"}}],
                                                name="Passengers <LO123>")
        nid = host.webpush.notify_users(audience=audience.id, title="Seat {seat}",
                                        vars={"flight": "LO123"}).id
        audience_id = audience.id
    host.run_worker()
    admin = admin_http(host)
    page = admin.get(f"/webpush/admin/notifications/{nid}").get_data(as_text=True)
    assert (f"Passengers &lt;LO123&gt; (audience {audience_id}, 1 member now)") in page
    assert "for everyone: <code>flight</code> = LO123." in page
    assert "<td class=\"webpush-text\">Seat 14C</td>" in page
    with host.app.app_context():
        host.webpush.delete_audience(audience_id)
    page = admin.get(f"/webpush/admin/notifications/{nid}").get_data(as_text=True)
    assert f"Audience {audience_id}, deleted since it was sent." in page


def test_the_fan_out_job_may_run_as_long_as_a_large_audience_needs(make_host: Any) -> None:
    """RQ stops a job after 180 s by default: a million-member fan-out was stopped half-way
    and began again from the start at every recovery, never finishing."""
    from datetime import UTC, datetime, timedelta

    from rq.job import Job

    from flask_webpush_targeted.redis_queue import fanout_job_id, redis_connection

    host = make_host(WEBPUSH_FANOUT_TIMEOUT=5400)
    with host.app.app_context():
        audience = host.webpush.create_audience(["1"], name="Big")
        now = host.webpush.notify_users(audience=audience.id, title="t")
        later = host.webpush.notify_users(["1"], title="t",
                                          send_at=datetime.now(UTC) + timedelta(hours=1))
        for n in (now, later):
            job = Job.fetch(fanout_job_id(n.id), connection=redis_connection())
            assert job.timeout == 5400
        host.webpush.cancel(later.id)
