"""The push API for external systems: keys, each endpoint, each bad input, idempotency,
limits, and a send through a real worker to the local push service.

Every test runs on SQLite and PostgreSQL with the real Redis; every answer is checked
against the OpenAPI document (``check_answer``), so none is outside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from conftest import LiveServer, SendingHost
from hostapp import REDIS_URL
from openapi_check import BASE, check_answer

from flask_webpush_targeted.push_api.keys import create_key

NOTIFICATIONS = f"{BASE}/notifications"


class Api:
    """A client of the push API on a SendingHost; every answer is checked against the doc."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.http = host.app.test_client()

    def key(self, *scopes: str, name: str = "crm") -> str:
        with self.host.app.app_context():
            return create_key(self.host.db, self.host.webpush.models, name,
                              scopes or ("send", "stats", "devices"))[1]

    def call(self, method: str, path: str, key: str | None = None, *,
             headers: dict[str, str] | None = None, **kw: Any) -> Any:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Authorization"] = f"Bearer {key}"
        response = self.http.open(path, method=method, headers=all_headers, **kw)
        response.body = check_answer(method, path, response)
        assert "Set-Cookie" not in response.headers  # no session, no cookie
        return response

    def send(self, key: str | None, body: Any, **headers: str) -> Any:
        return self.call("POST", NOTIFICATIONS, key, json=body, headers=headers)

    def count(self, model: str) -> int:
        m = getattr(self.host.webpush.models, model)
        with self.host.app.app_context():
            return int(self.host.db.session.scalar(sa.select(sa.func.count()).select_from(m)))


@pytest.fixture
def api(sending: SendingHost) -> Api:
    return Api(sending)


def assert_error(response: Any, status: int, error: str, *words: str) -> None:
    assert (response.status_code, response.body["error"]) == (status, error), response.body
    for word in words:
        assert word in response.body["message"]


# -- keys on the command line -------------------------------------------------------------------


def cli(host: SendingHost, *args: str) -> Any:
    return host.app.test_cli_runner().invoke(args=["webpush", "api-key", *args])


def test_cli_creates_a_key_shown_once_and_stores_only_its_hash(api: Api) -> None:
    created = cli(api.host, "create", "airline-ops", "--scope", "send", "--scope", "stats")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("wpk_") and "\n" not in key and key not in created.stderr
    assert "shown only this once" in created.stderr
    secret = key.split("_", 2)[2]
    with api.host.app.app_context():
        row = api.host.db.session.scalars(sa.select(api.host.webpush.models.ApiKey)).one()
        stored = [str(getattr(row, c.key)) for c in sa.inspect(row).mapper.column_attrs]
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in value for value in stored)
    assert row.scopes == ["send", "stats"] and row.name == "airline-ops"
    listed = cli(api.host, "list")
    assert "airline-ops" in listed.output and "send,stats" in listed.output
    assert secret not in listed.output and key not in listed.output
    assert api.call("GET", NOTIFICATIONS, key).status_code == 200


def test_cli_default_scope_is_send_and_unknown_scopes_are_refused(api: Api) -> None:
    assert cli(api.host, "create", "crm").exit_code == 0
    with api.host.app.app_context():
        assert api.host.db.session.scalars(
            sa.select(api.host.webpush.models.ApiKey.scopes)).one() == ["send"]
    refused = cli(api.host, "create", "crm", "--scope", "admin")
    assert refused.exit_code != 0 and api.count("ApiKey") == 1


def test_cli_revoke_by_id_name_or_whole_key_takes_effect_at_once(api: Api) -> None:
    first, second, third = (cli(api.host, "create", name).stdout.strip()
                            for name in ("one", "two", "three"))
    for key, handle in ((first, "1"), (second, "two"), (third, third)):
        assert api.send(key, {"user_ids": ["1"], "title": "Hi"}).status_code == 202
        revoked = cli(api.host, "revoke", handle)
        assert revoked.exit_code == 0 and "revoked" in revoked.output
        assert_error(api.send(key, {"user_ids": ["1"], "title": "Hi"}), 401,
                     "invalid_api_key", "revoked")
    assert cli(api.host, "revoke", "two").exit_code != 0  # nothing active by that name
    listed = cli(api.host, "list").output
    assert listed.count("\n") == 5 and "3 key(s)." in listed
    cli(api.host, "create", "twin")
    cli(api.host, "create", "twin")
    ambiguous = cli(api.host, "revoke", "twin")
    assert ambiguous.exit_code != 0 and "by its id" in ambiguous.output


def test_a_key_records_when_it_was_last_used(api: Api) -> None:
    key = api.key()
    before = cli(api.host, "list").output
    assert before.splitlines()[1].split()[-2:] == ["-", "-"]  # never used, not revoked
    api.call("GET", NOTIFICATIONS, key)
    with api.host.app.app_context():
        row = api.host.db.session.scalars(sa.select(api.host.webpush.models.ApiKey)).one()
    assert row.last_used_at is not None
    assert datetime.now(UTC) - row.last_used_at < timedelta(minutes=1)


# -- authentication and scopes -------------------------------------------------------------------


def test_no_key_unknown_key_wrong_secret_and_other_schemes_get_401(api: Api) -> None:
    key = api.key()
    key_id = key.split("_")[1]
    forged = f"wpk_{key_id}_{'A' * 43}"
    unknown = f"wpk_999_{'B' * 43}"
    missing = api.call("GET", NOTIFICATIONS)
    assert_error(missing, 401, "api_key_required")
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="webpush"'
    for header in (f"Basic {key}", "Bearer", "Bearer  ", key):
        response = api.call("GET", NOTIFICATIONS, headers={"Authorization": header})
        assert response.status_code == 401 and key not in response.get_data(as_text=True)
    for bad in (forged, unknown, "wpk_1_short", "sk_live_123", key + "x"):
        response = api.call("GET", NOTIFICATIONS, bad)
        assert_error(response, 401, "invalid_api_key")
        assert response.body["message"] == "The API key is not valid."
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert bad not in response.get_data(as_text=True)


def test_a_key_without_the_scope_gets_403(api: Api) -> None:
    stats_only, send_only, devices_only = api.key("stats"), api.key("send"), api.key("devices")
    assert_error(api.send(stats_only, {"user_ids": ["1"], "title": "Hi"}), 403,
                 "insufficient_scope", "'send'")
    assert_error(api.call("GET", NOTIFICATIONS, send_only), 403, "insufficient_scope", "stats")
    assert_error(api.call("GET", f"{BASE}/users/1/devices", send_only), 403,
                 "insufficient_scope", "devices")
    assert_error(api.call("GET", f"{NOTIFICATIONS}/1", devices_only), 403, "insufficient_scope")
    assert api.count("Notification") == 0


def test_a_send_key_sees_and_cancels_only_its_own_notifications(api: Api) -> None:
    mine, theirs, auditor = api.key("send"), api.key("send", name="other crm"), api.key("stats")
    own = api.send(mine, {"user_ids": ["1"], "title": "Mine"}).body["id"]
    other = api.send(theirs, {"user_ids": ["1"], "title": "Theirs"}).body["id"]
    with api.host.app.app_context():
        backoffice = api.host.webpush.notify_user("1", title="From Python").id
    assert api.call("GET", f"{NOTIFICATIONS}/{own}", mine).body["title"] == "Mine"
    for nid in (other, backoffice):
        assert_error(api.call("GET", f"{NOTIFICATIONS}/{nid}", mine), 404, "not_found")
        assert_error(api.call("DELETE", f"{NOTIFICATIONS}/{nid}", mine), 404, "not_found")
        assert api.call("GET", f"{NOTIFICATIONS}/{nid}", auditor).status_code == 200
    assert_error(api.call("DELETE", f"{NOTIFICATIONS}/{own}", auditor), 403,
                 "insufficient_scope")


def test_the_session_cookie_and_csrf_play_no_part(api: Api) -> None:
    api.http.get("/login/1")  # a logged-in browser session, CSRF protection on
    assert api.host.app.config["WEBPUSH_CSRF_ENABLED"]
    assert_error(api.send(None, {"user_ids": ["1"], "title": "Hi"}), 401, "api_key_required")
    # A key alone suffices: no CSRF token, and the session is neither needed nor changed.
    assert api.send(api.key(), {"user_ids": ["1"], "title": "Hi"}).status_code == 202


def test_nothing_logged_or_answered_repeats_a_key(api: Api, caplog: pytest.LogCaptureFixture,
                                                  ) -> None:
    good = api.key()
    cli(api.host, "revoke", "1")
    caplog.set_level(logging.DEBUG)
    server = LiveServer(api.host.app)
    try:
        keys = [good, f"wpk_1_{'C' * 43}", f"wpk_77_{'D' * 43}", "not-a-key"]
        answers = [requests.get(f"{server.url}{NOTIFICATIONS}", timeout=10,
                                headers={"Authorization": f"Bearer {k}"}) for k in keys]
        answers.append(requests.post(f"{server.url}{NOTIFICATIONS}", timeout=10,
                                     headers={"Authorization": f"Bearer {good}"},
                                     json={"user_ids": ["1"], "title": "Hi"}))
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [401] * 5
    logged = caplog.text + "".join(a.text + json.dumps(dict(a.headers)) for a in answers)
    assert any(r.name == "werkzeug" for r in caplog.records)  # the server logged its requests
    for key in keys:
        assert key not in logged
        assert key.split("_", 2)[-1] not in logged


# -- POST notifications -------------------------------------------------------------------------


def test_send_answers_202_with_status_url_and_users_without_devices_then_a_worker_delivers(
    api: Api,
) -> None:
    key = api.key("send")
    phone = api.host.subscribe("1042", "Firefox on Linux")
    api.host.subscribe("1043", "Chrome on Android")
    revoked = api.host.subscribe("1044", "Old laptop")
    with api.host.app.app_context():
        api.host.webpush.store.revoke("1044", revoked.id)
    answer = api.send(key, {
        "user_ids": ["1042", 1043, "1044", "1045", "1042"],
        "title": "Flight LO123 boards at gate 12", "body": "Boarding closes 10:40.",
        "url": "/trips/42", "devices": "all", "ttl": 3600, "urgency": "high",
        "topic": "trip-42", "category": "travel", "icon": "/static/icon.png",
        "tag": "trip", "actions": [{"action": "open", "title": "Open"}], "data": {"trip": 42},
        "require_interaction": True, "silent": False, "image": None,
    })
    assert answer.status_code == 202
    body = answer.body
    assert body["status"] == "queued" and body["replayed"] is False
    assert body["users_without_devices"] == ["1044", "1045"] and body["targeted_users"] == 4
    assert answer.headers["Location"] == body["status_url"]
    assert body["status_url"].endswith(f"{NOTIFICATIONS}/{body['id']}")
    api.host.run_worker()
    [push] = api.host.push_service.received_for(phone.endpoint)
    payload = push.notification()
    assert (payload["title"], payload["body"], payload["url"]) == (
        "Flight LO123 boards at gate 12", "Boarding closes 10:40.", "/trips/42")
    assert payload["data"] == {"trip": 42} and payload["token"]
    assert push.urgency == "high" and push.topic == "trip-42" and 3590 <= push.ttl <= 3600
    status = api.call("GET", body["status_url"].replace("http://localhost", ""), key)
    assert status.body["status"] == "done"
    figures = status.body["stats"]
    assert (figures["targeted_users"], figures["users_without_devices"], figures["sent"],
            figures["deliveries"]) == (4, 2, 2, 2)


def test_a_scheduled_send_uses_the_offset_and_the_chosen_devices(api: Api) -> None:
    key = api.key("send")
    phone = api.host.subscribe("1", "Phone")
    api.host.subscribe("1", "Laptop")
    answer = api.send(key, {"user_ids": ["1", "2"], "title": "Table ready",
                            "send_at": "2099-12-01T19:30:00+01:00", "devices": [phone.id]})
    assert answer.status_code == 202, answer.body
    assert answer.body["status"] == "scheduled"
    assert answer.body["send_at"] == "2099-12-01T18:30:00+00:00"
    assert answer.body["users_without_devices"] == ["2"]
    assert api.host.notification(answer.body["id"]).targeting["subscription_ids"] == [phone.id]


MINIMAL = {"user_ids": ["1"], "title": "Hi"}


@pytest.mark.parametrize(("body", "words"), [
    ({**MINIMAL, "colour": "red"}, ["colour"]),
    ({"title": "Hi"}, ["user_ids"]),
    ({"user_ids": ["1"]}, ["title"]),
    ({**MINIMAL, "user_ids": "1"}, ["user_ids"]),
    ({**MINIMAL, "user_ids": [True]}, ["user_ids[0]"]),
    ({**MINIMAL, "user_ids": [{"id": 1}]}, ["user_ids[0]"]),
    ({**MINIMAL, "user_ids": [2**64]}, ["64-bit"]),
    ({**MINIMAL, "user_ids": ["a\x00b"]}, ["NUL"]),
    ({**MINIMAL, "title": 5}, ["title"]),
    ({**MINIMAL, "title": None}, ["title"]),
    ({**MINIMAL, "body": ["x"]}, ["body"]),
    ({**MINIMAL, "ttl": "3600"}, ["ttl"]),
    ({**MINIMAL, "ttl": 1.5}, ["ttl"]),
    ({**MINIMAL, "ttl": True}, ["ttl"]),
    ({**MINIMAL, "require_interaction": "yes"}, ["require_interaction"]),
    ({**MINIMAL, "devices": {"all": True}}, ["devices"]),
    ({**MINIMAL, "devices": ["1"]}, ["devices[0]"]),
    ({**MINIMAL, "devices": [0]}, ["devices[0]"]),
    ({**MINIMAL, "actions": [{"action": 1, "title": "x"}]}, ["actions[0]"]),
    ({**MINIMAL, "actions": [{"action": "a", "title": "x", "onclick": "y"}]}, ["actions[0]"]),
    ({**MINIMAL, "category": "a\x00"}, ["category"]),
    ({**MINIMAL, "send_at": "2026-12-01T09:00:00"}, ["offset"]),
    ({**MINIMAL, "send_at": "2026-12-01"}, ["offset"]),
    ({**MINIMAL, "send_at": "2026-12-01 09:00:00+01:00"}, ["RFC 3339"]),
    ({**MINIMAL, "send_at": 1_790_000_000}, ["send_at"]),
    ({**MINIMAL, "send_at": "2026-13-01T09:00:00Z"}, ["valid"]),
    ({**MINIMAL, "send_at": "0001-01-01T00:00:00+01:00"}, ["valid"]),
    ({**MINIMAL, "data": json.loads("[" * 40 + "]" * 40)}, ["nested"]),
    (["1"], ["object"]),
])
def test_malformed_bodies_get_400_with_a_reason_and_store_nothing(
    api: Api, body: Any, words: list[str],
) -> None:
    assert_error(api.send(api.key(), body), 400, "bad_request", *words)
    assert api.count("Notification") == 0


@pytest.mark.parametrize(("raw", "content_type", "words"), [
    (b'{"user_ids": ["1"], "title": ', "application/json", ["JSON"]),
    (b'{"user_ids": ["1"], "title": "Hi"}', "text/plain", ["Content-Type"]),
    (b'{"user_ids": ["1"], "title": "Hi", "ttl": NaN}', "application/json", ["NaN"]),
    (b'{"user_ids": ["1"], "title": "Hi", "ttl": 1e999}', "application/json", ["range"]),
    (b'{"user_ids": ["1"], "title": "Hi", "title": "Ho"}', "application/json", ["twice"]),
    (b'{"user_ids": ["1"], "title": "\\ud800"}', "application/json", ["Unicode"]),
    (b'{"user_ids": ["1"], "title": "\xff"}', "application/json", ["JSON"]),
    (b"[" * 5000 + b"]" * 5000, "application/json", ["nested"]),
])
def test_bodies_that_are_not_strict_json_get_400(
    api: Api, raw: bytes, content_type: str, words: list[str],
) -> None:
    response = api.call("POST", NOTIFICATIONS, api.key(), data=raw,
                        headers={"Content-Type": content_type})
    assert_error(response, 400, "bad_request", *words)


@pytest.mark.parametrize(("change", "words"), [
    ({"urgency": "asap"}, ["urgency"]),
    ({"ttl": 99_999_999}, ["ttl"]),
    ({"ttl": -1}, ["ttl"]),
    ({"topic": "has space"}, ["topic"]),
    ({"url": "https://evil.example/phish"}, ["url"]),
    ({"url": "http://[::1"}, ["not a valid URL"]),
    ({"url": "//evil.example"}, ["url"]),
    ({"title": "   "}, ["title"]),
    ({"user_ids": [""]}, ["user"]),
    ({"user_ids": ["x" * 256]}, ["user"]),
    ({"user_ids": []}, ["No user"]),
    ({"category": "c" * 65}, ["category"]),
    ({"tag": ""}, ["tag"]),
    ({"devices": "newest"}, ["devices"]),
    ({"devices": []}, ["devices"]),
    ({"devices": [999_999]}, ["do not belong"]),
    ({"actions": [{"action": "a", "title": "A"}] * 3}, ["actions"]),
])
def test_refused_values_get_422_with_the_librarys_reason(
    api: Api, change: dict[str, Any], words: list[str],
) -> None:
    assert_error(api.send(api.key(), {**MINIMAL, **change}), 422, "invalid_notification", *words)
    assert api.count("Notification") == 0


def test_a_payload_over_the_web_push_limit_gets_413(api: Api) -> None:
    for change in ({"body": "x" * 4000}, {"data": {"blob": "y" * 3900}}):
        assert_error(api.send(api.key(), {**MINIMAL, **change}), 413, "payload_too_large",
                     "3993")
    assert api.count("Notification") == 0


def test_at_most_max_users_ids_per_request(api: Api) -> None:
    key = api.key()
    limit = api.host.app.config["WEBPUSH_API_MAX_USERS"]
    assert limit == 10_000
    too_many = api.send(key, {"user_ids": [str(i) for i in range(limit + 1)], "title": "Hi"})
    assert_error(too_many, 413, "too_many_users", "10001", "as an audience (POST audiences)")
    assert api.count("Notification") == 0
    at_limit = api.send(key, {"user_ids": list(range(limit)), "title": "Hi"})
    assert at_limit.status_code == 202
    assert len(at_limit.body["users_without_devices"]) == limit


def test_a_body_over_the_size_limit_gets_413(api: Api) -> None:
    limit = api.host.app.config["WEBPUSH_API_MAX_REQUEST_BYTES"]
    body = json.dumps({**MINIMAL, "data": "z" * limit})
    assert_error(api.call("POST", NOTIFICATIONS, api.key(), data=body,
                          headers={"Content-Type": "application/json"}), 413, "too_large")


# -- idempotency -------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_answer_the_same_notification_sent_once(
    api: Api,
) -> None:
    key = api.key()
    sub = api.host.subscribe("1")
    first = api.send(key, MINIMAL, **{"Idempotency-Key": "gate-change-42"})
    again = api.send(key, {"title": "Hi", "user_ids": ["1"], "ttl": None},
                     **{"Idempotency-Key": "gate-change-42"})
    assert first.status_code == again.status_code == 202
    assert first.body["id"] == again.body["id"] and again.body["replayed"] is True
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    api.host.run_worker()
    assert api.host.push_service.request_count(sub.endpoint) == 1
    assert api.count("Notification") == 1


def test_an_idempotency_key_reused_with_another_body_gets_409(api: Api) -> None:
    key = api.key()
    first = api.send(key, {**MINIMAL, "send_at": "2099-01-01T10:00:00+01:00"},
                     **{"Idempotency-Key": "k1"})
    # The same instant written otherwise, and the same integer as a float: the same request.
    same = api.send(key, {"send_at": "2099-01-01T09:00:00Z", "user_ids": [1], "title": "Hi"},
                    **{"Idempotency-Key": "k1"})
    assert same.body["id"] == first.body["id"]
    other = api.send(key, {**MINIMAL, "title": "Ho"}, **{"Idempotency-Key": "k1"})
    assert_error(other, 409, "idempotency_conflict", "another request body")
    assert api.count("Notification") == 1


def test_idempotency_keys_are_scoped_per_api_key(api: Api) -> None:
    crm, ticketing = api.key("send", name="crm"), api.key("send", name="ticketing")
    a = api.send(crm, MINIMAL, **{"Idempotency-Key": "order-1"})
    b = api.send(ticketing, {**MINIMAL, "title": "Other"}, **{"Idempotency-Key": "order-1"})
    assert a.status_code == b.status_code == 202 and a.body["id"] != b.body["id"]


def test_a_refused_request_does_not_use_up_its_idempotency_key(api: Api) -> None:
    key = api.key()
    refused = api.send(key, {**MINIMAL, "urgency": "asap"}, **{"Idempotency-Key": "retry-me"})
    assert refused.status_code == 422
    fixed = api.send(key, {**MINIMAL, "urgency": "high"}, **{"Idempotency-Key": "retry-me"})
    assert fixed.status_code == 202 and fixed.body["replayed"] is False


@pytest.mark.parametrize("value", ["", "x" * 201, "has space", "caf\u00e9"])
def test_a_malformed_idempotency_key_gets_400(api: Api, value: str) -> None:
    response = api.call("POST", NOTIFICATIONS, api.key(), json=MINIMAL,
                        headers={"Idempotency-Key": value.encode("utf-8").decode("latin-1")})
    assert_error(response, 400, "bad_request", "Idempotency-Key")


# -- GET / DELETE notifications/{id} -------------------------------------------------------------


def test_cancel_a_scheduled_notification_then_nothing_is_sent(api: Api) -> None:
    key = api.key()
    sub = api.host.subscribe("1")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    nid = api.send(key, {**MINIMAL, "send_at": later}).body["id"]
    cancelled = api.call("DELETE", f"{NOTIFICATIONS}/{nid}", key)
    assert cancelled.status_code == 200 and cancelled.body["status"] == "cancelled"
    assert cancelled.body["finished_at"]
    api.host.run_worker()
    assert api.host.push_service.request_count(sub.endpoint) == 0
    assert_error(api.call("DELETE", f"{NOTIFICATIONS}/{nid}", key), 409, "not_cancellable",
                 "cancelled")


def test_a_finished_notification_cannot_be_cancelled(api: Api) -> None:
    key = api.key()
    api.host.subscribe("1")
    nid = api.send(key, MINIMAL).body["id"]
    api.host.run_worker()
    assert_error(api.call("DELETE", f"{NOTIFICATIONS}/{nid}", key), 409, "not_cancellable",
                 "done")
    assert api.call("GET", f"{NOTIFICATIONS}/{nid}", key).body["stats"]["sent"] == 1


@pytest.mark.parametrize("raw_id", ["424242", "0", "-1", "abc", "9" * 30, "1.0"])
def test_unknown_notification_ids_get_a_json_404(api: Api, raw_id: str) -> None:
    key = api.key()
    for method in ("GET", "DELETE"):
        assert_error(api.call(method, f"{NOTIFICATIONS}/{raw_id}", key), 404, "not_found")


# -- GET notifications --------------------------------------------------------------------------


def test_list_pages_and_filters_by_time_status_and_category(api: Api) -> None:
    key = api.key()
    ids = [api.send(key, {**MINIMAL, "title": f"N{i}", "category": "travel" if i else "shop"})
           .body["id"] for i in range(3)]
    api.call("DELETE", f"{NOTIFICATIONS}/{ids[1]}", key)
    first = api.call("GET", f"{NOTIFICATIONS}?per_page=2", key).body
    assert [n["id"] for n in first["notifications"]] == [ids[2], ids[1]]
    assert (first["total"], first["page"], first["per_page"]) == (3, 1, 2)
    second = api.call("GET", first["next"].replace("http://localhost", ""), key).body
    assert [n["id"] for n in second["notifications"]] == [ids[0]] and second["next"] is None
    assert second["notifications"][0]["stats"]["targeted_users"] == 1

    def listed(query: str) -> list[int]:
        return [n["id"] for n in api.call("GET", f"{NOTIFICATIONS}?{query}", key)
                .body["notifications"]]

    assert listed("status=cancelled") == [ids[1]]
    assert listed("category=shop") == [ids[0]]
    assert listed("since=2000-01-01T00:00:00Z&category=travel") == [ids[2], ids[1]]
    assert listed("since=2099-01-01T00:00:00%2B01:00") == []
    assert listed("until=2000-01-01T00:00:00Z") == []
    assert listed("since=&status=&category=shop") == [ids[0]]  # empty: no filter
    # "2.0" is the integer 2 to JSON Schema, so the document accepts it (schemathesis sent it)
    page = api.call("GET", f"{NOTIFICATIONS}?per_page=2.0&page=1.00", key)
    assert page.status_code == 200, page.body
    assert (page.body["page"], page.body["per_page"]) == (1, 2)


@pytest.mark.parametrize(("query", "words"), [
    ("since=2026-12-01T09:00:00", ["offset"]),
    ("until=yesterday", ["until"]),
    ("status=sent", ["status"]),
    ("page=0", ["page"]),
    ("page=1e3", ["page"]),
    ("per_page=101", ["per_page"]),
    ("per_page=2.5", ["per_page"]),
    ("page=.0", ["page"]),
    ("category=%00", ["category"]),
])
def test_bad_list_filters_get_400(api: Api, query: str, words: list[str]) -> None:
    assert_error(api.call("GET", f"{NOTIFICATIONS}?{query}", api.key()), 400, "bad_request",
                 *words)


# -- GET users/{id}/devices ---------------------------------------------------------------------


def test_devices_show_what_support_may_see_and_never_endpoints_or_keys(api: Api) -> None:
    key = api.key("devices", "send")
    phone = api.host.subscribe("u/42", "Firefox on Android")
    laptop = api.host.subscribe("u/42", "Chrome on Linux")
    with api.host.app.app_context():
        api.host.webpush.store.revoke("u/42", laptop.id)
    api.send(key, {"user_ids": ["u/42"], "title": "Hi"})
    api.host.run_worker()
    response = api.call("GET", f"{BASE}/users/u/42/devices", key)
    assert response.status_code == 200 and response.body["user_id"] == "u/42"
    devices = {d["label"]: d for d in response.body["devices"]}
    assert set(devices) == {"Firefox on Android", "Chrome on Linux"}
    active, revoked = devices["Firefox on Android"], devices["Chrome on Linux"]
    assert active["active"] and active["consent"]["state"] == "granted"
    assert active["consent"]["text_version"] == "1" and active["consent"]["ended_at"] is None
    assert active["last_used_at"] >= active["added_at"]
    assert revoked["consent"]["state"] == "withdrawn" and not revoked["active"]
    assert revoked["consent"]["reason"] == "device_revoked" and revoked["consent"]["ended_at"]
    text = response.get_data(as_text=True)
    for secret in (phone.endpoint, phone.p256dh, phone.auth, laptop.endpoint, laptop.auth,
                   phone.endpoint.rsplit("/", 1)[1]):
        assert secret not in text
    unknown = api.call("GET", f"{BASE}/users/nobody/devices", key)
    assert unknown.body == {"user_id": "nobody", "devices": []}
    assert_error(api.call("GET", f"{BASE}/users/{'x' * 256}/devices", key), 400, "bad_request")
    assert_error(api.call("GET", f"{BASE}/users/a%00b/devices", key), 400, "bad_request")


# -- rate limit ---------------------------------------------------------------------------------


@pytest.fixture
def limited(make_host: Callable[..., SendingHost]) -> Api:
    return Api(make_host(WEBPUSH_API_RATE_LIMIT=3))


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(limited: Api) -> None:
    key, other = limited.key(), limited.key(name="other")
    while time.time() % 60 > 55:  # the window is the minute: do not straddle two
        time.sleep(0.5)
    answers = [limited.call("GET", NOTIFICATIONS, key) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert_error(answers[3], 429, "rate_limited", "Retry-After")
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert limited.call("GET", NOTIFICATIONS, other).status_code == 200  # per key


# -- Redis down --------------------------------------------------------------------------------


@pytest.fixture
def redis_down(db_url: str, push_service: Any, redis_conn: Any) -> Iterator[Api]:
    host = SendingHost(db_url, push_service, WEBPUSH_REDIS_URL="redis://127.0.0.1:1/0")
    yield Api(host)
    # Clean the test's queue on the real Redis.
    host.app.config["WEBPUSH_REDIS_URL"] = REDIS_URL
    host.app.extensions["webpush.state"].redis = None
    host.close()


def test_with_redis_down_a_send_is_stored_answered_and_recovered_by_a_worker(
    redis_down: Api,
) -> None:
    sub = redis_down.host.subscribe("1")
    answer = redis_down.send(redis_down.key(), MINIMAL)  # no rate limit without Redis either
    assert answer.status_code == 202 and answer.body["status"] == "queued"
    redis_down.host.run_worker(WEBPUSH_REDIS_URL=REDIS_URL)
    assert redis_down.host.push_service.request_count(sub.endpoint) == 1


# -- the documentation's example ------------------------------------------------------------------


def test_the_crm_job_of_docs_api_md_runs_against_a_live_server(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    code = text.split("<!-- crm-job")[1].split("```python\n")[1].split("```")[0]
    sub = api.host.subscribe("1042")
    server = LiveServer(api.host.app)
    monkeypatch.setenv("WEBPUSH_API", f"{server.url}{BASE}")
    monkeypatch.setenv("WEBPUSH_API_KEY", api.key("send"))
    namespace: dict[str, Any] = {}
    try:
        exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own docs
        job = namespace["notify_gate_change"]
        assert job("LO123", "12", ["1042", "1043"]) == ["1043"]
        assert job("LO123", "12", ["1042", "1043"]) == ["1043"]  # a rerun sends nothing new
    finally:
        server.stop()
    assert api.count("Notification") == 1
    api.host.run_worker()
    [push] = api.host.push_service.received_for(sub.endpoint)
    assert push.notification()["title"] == "LO123 now boards at gate 12" and push.urgency == "high"
