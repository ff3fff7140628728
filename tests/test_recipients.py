"""Per-recipient data: ``{name}`` placeholders filled from each recipient's vars, on SQLite
and PostgreSQL, with a real `flask webpush worker` and the local push service, which
decrypts every payload."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost

from flask_webpush_targeted.exceptions import InvalidNotification, PayloadTooLarge

FLIGHT = "Flight {flight} boards at gate {gate}"


def counts(host: SendingHost) -> tuple[int, ...]:
    m = host.webpush.models
    with host.app.app_context():
        return tuple(host.db.session.scalar(sa.select(sa.func.count()).select_from(t))
                     for t in (m.Notification, m.Delivery, m.Audience, m.AudienceMember))


def test_three_hundred_passengers_each_get_their_own_gate_and_seat(
        make_host: Any, push_service: Any) -> None:
    host = make_host(WEBPUSH_BATCH_SIZE=100)
    subs = {str(i): host.subscribe(str(i)) for i in range(300)}
    recipients = [{"user": str(i), "vars": {"gate": str(i % 40 + 1), "seat": f"{i % 30 + 1}C"}}
                  for i in range(300)]
    with host.app.app_context():
        n = host.webpush.notify_users(recipients=recipients, title=FLIGHT, body="Seat {seat}",
                                      url="/trips/{flight}?seat={seat}",
                                      vars={"flight": "LO123"})
        nid = n.id
    host.run_worker(timeout=120)
    for i in range(300):
        [push] = push_service.received_for(subs[str(i)].endpoint)
        payload = push.notification()
        assert payload["title"] == f"Flight LO123 boards at gate {i % 40 + 1}"
        assert payload["body"] == f"Seat {i % 30 + 1}C"
        assert payload["url"] == f"/trips/LO123?seat={i % 30 + 1}C"
    with host.app.app_context():
        figures = host.webpush.stats(nid)
        assert (figures["sent"], figures["targeted_users"]) == (300, 300)
        m = host.webpush.models
        # The recipients' vars live on their deliveries once fanned out; the copy is gone.
        assert host.db.session.scalar(sa.select(sa.func.count()).select_from(m.Audience)) == 0


def test_a_recipients_own_var_wins_over_the_notifications(
        make_host: Any, push_service: Any) -> None:
    host = make_host()
    late, usual = host.subscribe("late"), host.subscribe("usual")
    with host.app.app_context():
        host.webpush.notify_users(
            recipients=[{"user": "late", "vars": {"gate": "B7"}}, {"user": "usual"}],
            title=FLIGHT, vars={"flight": "LO123", "gate": "A1"})
    host.run_worker()
    assert push_service.received_for(late.endpoint)[0].notification()["title"] == (
        "Flight LO123 boards at gate B7")
    assert push_service.received_for(usual.endpoint)[0].notification()["title"] == (
        "Flight LO123 boards at gate A1")


def test_action_titles_are_filled_and_braces_escape(make_host: Any, push_service: Any) -> None:
    host = make_host()
    sub = host.subscribe("7")
    with host.app.app_context():
        host.webpush.notify_users(
            recipients=[{"user": "7", "vars": {"seat": "14C", "name": "{Ann}"}}],
            title="{{Hi}} {name}", actions=[{"action": "seat", "title": "Seat {seat}"}])
    host.run_worker()
    payload = push_service.received_for(sub.endpoint)[0].notification()
    # A value is never parsed again: "{Ann}" stays as the CRM wrote it.
    assert payload["title"] == "{Hi} {Ann}"
    assert payload["actions"] == [{"action": "seat", "title": "Seat 14C"}]


def test_without_vars_the_texts_are_sent_as_written(make_host: Any, push_service: Any) -> None:
    host = make_host()
    sub = host.subscribe("7")
    with host.app.app_context():
        host.webpush.notify_users(["7"], title="Use {CODE} at checkout")
    host.run_worker()
    [push] = push_service.received_for(sub.endpoint)
    assert push.notification()["title"] == "Use {CODE} at checkout"


def test_a_missing_var_is_refused_at_call_time_naming_the_recipient(make_host: Any) -> None:
    host = make_host()
    before = counts(host)
    recipients = [{"user": "1", "vars": {"gate": "1"}}, {"user": "2", "vars": {"seat": "2A"}}]
    with host.app.app_context(), pytest.raises(
            InvalidNotification, match=r"recipients\[1\] \(user '2'\): no value for the "
                                       r"placeholder \{gate\}"):
        host.webpush.notify_users(recipients=recipients, title=FLIGHT, vars={"flight": "X"})
    assert counts(host) == before


def test_an_oversized_recipient_is_refused_naming_it(make_host: Any) -> None:
    host = make_host()
    before = counts(host)
    recipients = [{"user": "short", "vars": {"note": "ok"}},
                  {"user": "long", "vars": {"note": "é" * 1000}},
                  {"user": "longer", "vars": {"note": "x" * 1000}}]
    with host.app.app_context(), pytest.raises(
            PayloadTooLarge, match=r"recipients\[1\] \(user 'long'\): The payload is \d+ bytes"):
        host.webpush.notify_users(recipients=recipients, title="Note", body="{note}" * 3)
    assert counts(host) == before


@pytest.mark.parametrize("template", [
    "{0.__class__}", "{flight.__class__.__mro__}", "{flight[0]}", "{flight!r}",
    "{flight:>99999}", "{}", "{0}", "{ flight}", "unclosed {flight", "stray } brace",
])
def test_placeholders_that_are_not_plain_names_are_refused(make_host: Any, template: str) -> None:
    host = make_host()
    before = counts(host)
    with host.app.app_context(), pytest.raises(InvalidNotification):
        host.webpush.notify_users(recipients=[{"user": "1", "vars": {"flight": "LO1"}}],
                                  title=template)
    assert counts(host) == before


@pytest.mark.parametrize(("recipients", "message"), [
    ([{"user": "1"}, {"user": 1}], r"recipients\[1\]: user '1' is already recipients\[0\]"),
    ([{"user": "1", "vars": {"0gate": "1"}}], r"is not a var name"),
    ([{"user": "1", "vars": {"gate": None}}], r"must be a string or a number"),
    ([{"user": "1", "vars": {"gate": float("nan")}}], r"finite"),
    ([{"user": "1", "vars": {"gate": "a\x00b"}}], r"NUL"),
    ([{"user": "1", "vars": {"gate": "\ud800"}}], r"surrogates"),
    ([{"user": "1", "vars": {"gate": "x" * 1001}}], r"longer than 1000"),
    ([{"user": "1", "extra": 1}], r"must be \{'user'"),
    ([], r"No user to notify"),
    ("1", r"recipients must be a list"),
])
def test_bad_recipients_are_refused(make_host: Any, recipients: Any, message: str) -> None:
    host = make_host()
    with host.app.app_context(), pytest.raises(InvalidNotification, match=message):
        host.webpush.notify_users(recipients=recipients, title="{gate}")


def test_a_url_value_cannot_lead_off_site(make_host: Any, push_service: Any) -> None:
    host = make_host()
    sub = host.subscribe("7")
    with host.app.app_context():
        host.webpush.notify_users(recipients=[{"user": "7", "vars": {"p": "/evil.example/x"}}],
                                  title="t", url="/{p}")
    host.run_worker()
    # Percent-encoded in a URL: "//evil.example" (another site) can never come out.
    [push] = push_service.received_for(sub.endpoint)
    assert push.notification()["url"] == "/%2Fevil.example%2Fx"


def test_exactly_one_of_users_audience_and_recipients(make_host: Any) -> None:
    host = make_host()
    with host.app.app_context():
        for kwargs in ({}, {"users": ["1"], "recipients": [{"user": "1"}]},
                       {"users": ["1"], "audience": 1}):
            with pytest.raises(InvalidNotification, match="one of users, audience or recipients"):
                host.webpush.notify_users(title="t", **kwargs)


def test_staff_and_the_customer_see_the_title_each_recipient_got(
        make_host: Any, push_service: Any) -> None:
    import csv
    import io

    from conftest import admin_http

    host = make_host()

    one, two = host.subscribe("1"), host.subscribe("2")
    with host.app.app_context():
        nid = host.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"flight": "LO123", "gate": "12"}},
                        {"user": "2", "vars": {"flight": "=HYPERLINK(\"x\")", "gate": "1"}}],
            title=FLIGHT).id
    host.run_worker()
    admin = admin_http(host)
    page = admin.get(f"/webpush/admin/notifications/{nid}").get_data(as_text=True)
    assert "Flight {flight} boards at gate {gate}" in page  # the notification's template
    assert f'data-delivery-id="{host.deliveries(nid)[0].id}"' in page
    assert "Flight LO123 boards at gate 12" in page
    assert "Flight =HYPERLINK(&#34;x&#34;) boards at gate 1" in page  # escaped as text
    rows = list(csv.DictReader(io.StringIO(
        admin.get(f"/webpush/admin/notifications/{nid}/deliveries.csv").get_data(as_text=True))))
    assert {r["user_id"]: r["title"] for r in rows} == {
        "1": "Flight LO123 boards at gate 12", "2": 'Flight =HYPERLINK("x") boards at gate 1'}
    as_json = admin.get(f"/webpush/admin/notifications/{nid}/deliveries.json").get_json()
    assert {d["user_id"]: d["title"] for d in as_json["deliveries"]} == {
        "1": "Flight LO123 boards at gate 12", "2": 'Flight =HYPERLINK("x") boards at gate 1'}
    history = admin.get("/webpush/admin/users/1").get_data(as_text=True)
    assert "Flight LO123 boards at gate 12" in history
    with host.app.app_context():
        received = host.webpush.export_user("1")["notifications_received"]
    assert [r["title"] for r in received] == ["Flight LO123 boards at gate 12"]
    assert {one.id, two.id} == {d.subscription_id for d in host.deliveries(nid)}


def test_a_title_that_starts_with_a_formula_once_filled_is_text_in_the_csv(
        make_host: Any, push_service: Any) -> None:
    import csv
    import io

    from conftest import admin_http

    host = make_host()

    host.subscribe("1")
    with host.app.app_context():
        nid = host.webpush.notify_users(
            recipients=[{"user": "1", "vars": {"code": "=cmd|' /C calc'!A0"}}],
            title="{code} is your code").id
    host.run_worker()
    admin = admin_http(host)
    [row] = csv.DictReader(io.StringIO(
        admin.get(f"/webpush/admin/notifications/{nid}/deliveries.csv").get_data(as_text=True)))
    assert row["title"] == "'=cmd|' /C calc'!A0 is your code"
