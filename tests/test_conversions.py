"""Conversions: an order attributed to the push clicked (direct) or displayed (influenced)
before it, counted once per order id, its value kept exactly, per currency.

Every push here is sent for real: an RQ worker sends it to the local push service, which
decrypts it; the tracking token is read from the message and the displayed and clicked
beacons go through ``POST /webpush/events`` at times set by a ManualClock. SQLite and
PostgreSQL, the real Redis.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, localcontext
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost, admin_http
from fuzz_strategies import (
    extreme_datetimes,
    fuzz_settings,
    huge_integers,
    nasty_floats,
    nasty_text,
    wrong_types,
)
from hypothesis import given
from hypothesis import strategies as st
from openapi_check import BASE, check_answer

from flask_webpush_targeted import InvalidConversion, WebPushError
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.exceptions import ConfigurationError
from flask_webpush_targeted.push_api.keys import create_key
from flask_webpush_targeted.worker import make_worker

EVENTS = "/webpush/events"


class Shop:
    """A sending host whose clock the test moves; pushes sent for real, beacons posted."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
        self.tokens: dict[tuple[int, str], str] = {}
        self.subs: dict[str, Any] = {}

    def send(self, users: list[str], title: str = "Winter sale") -> int:
        for user in users:
            if user not in self.subs:
                self.subs[user] = self.host.subscribe(user)
        with self.host.app.app_context():
            nid = int(self.host.webpush.notify_users(users, title=title, url="/sale").id)
        make_worker(self.host.app, simple=True).work(burst=True)
        for user in users:
            pushes = [p for p in self.host.push_service.received_for(self.subs[user].endpoint)
                      if p.ok and p.notification()["title"] == title]
            assert pushes, f"{user} got no push of notification {nid}"
            self.tokens[(nid, user)] = pushes[-1].notification()["token"]
        return nid

    def beacon(self, nid: int, user: str, event: str) -> None:
        client = self.host.app.test_client(use_cookies=False)
        answer = client.post(EVENTS, json={"token": self.tokens[(nid, user)], "event": event},
                             environ_base={"REMOTE_ADDR": f"10.9.{nid % 250}.{len(user)}"})
        assert answer.status_code == 200 and answer.get_json()["counted"], answer.get_json()

    def later(self, **span: float) -> datetime:
        return self.clock.advance(timedelta(**span).total_seconds())

    def convert(self, user: str, **kw: Any) -> Any:
        with self.host.app.app_context():
            return self.host.webpush.record_conversion(user, **kw)

    def stats(self, nid: int) -> dict[str, Any]:
        with self.host.app.app_context():
            return dict(self.host.webpush.stats(nid))

    def rows(self) -> list[Any]:
        C = self.host.webpush.models.Conversion
        with self.host.app.app_context():
            rows = self.host.db.session.scalars(sa.select(C).order_by(C.id)).all()
            for row in rows:
                self.host.db.session.expunge(row)
            return list(rows)


@pytest.fixture
def shop(sending: SendingHost) -> Any:
    shop = Shop(sending)
    with use_clock(shop.clock):
        yield shop


def delivery_of(shop: Shop, nid: int, user: str) -> int:
    [d] = [d for d in shop.host.deliveries(nid) if d.user_id == user]
    return int(d.id)


def test_a_click_then_an_order_is_direct_a_display_alone_influenced_and_neither_unattributed(
        shop: Shop) -> None:
    nid = shop.send(["clicker", "viewer", "idle"])
    for user in ("clicker", "viewer"):
        shop.beacon(nid, user, "displayed")
    shop.beacon(nid, "clicker", "clicked")
    shop.later(hours=3)

    assert shop.convert("clicker", value="129.90", currency="EUR", order_id="A-1") == {
        "notification_id": nid, "delivery_id": delivery_of(shop, nid, "clicker"),
        "kind": "direct"}
    assert shop.convert("viewer", value="40", currency="EUR", order_id="A-2") == {
        "notification_id": nid, "delivery_id": delivery_of(shop, nid, "viewer"),
        "kind": "influenced"}
    assert shop.convert("idle", value="15.00", currency="EUR", order_id="A-3") is None

    stats = shop.stats(nid)
    assert (stats["conversions"], stats["influenced_conversions"]) == (1, 1)
    assert stats["revenue"] == {"EUR": "129.90"}  # the direct conversion's value only
    assert stats["conversion_rate"] == round(1 / 3, 4)  # per delivery sent
    kinds = {r.order_id: r.kind for r in shop.rows()}
    assert kinds == {"A-1": "direct", "A-2": "influenced", "A-3": "none"}  # all recorded


def test_an_order_outside_both_windows_is_unattributed(shop: Shop) -> None:
    nid = shop.send(["late"])
    shop.beacon(nid, "late", "displayed")
    shop.beacon(nid, "late", "clicked")
    shop.later(hours=24, seconds=1)
    assert shop.convert("late", value="9.99", currency="PLN", order_id="B-1") is None
    stats = shop.stats(nid)
    assert (stats["conversions"], stats["influenced_conversions"], stats["revenue"]) == (0, 0, {})
    assert [r.kind for r in shop.rows()] == ["none"]


def test_the_windows_are_settings(make_host: Any) -> None:
    shop = Shop(make_host(WEBPUSH_ATTRIBUTION_WINDOW=timedelta(hours=1),
                          WEBPUSH_INFLUENCE_WINDOW=7 * 86400))
    with use_clock(shop.clock):
        nid = shop.send(["u"])
        shop.beacon(nid, "u", "displayed")
        shop.beacon(nid, "u", "clicked")
        shop.later(hours=2)  # past the click's hour, inside the display's week
        assert shop.convert("u", order_id="C-1")["kind"] == "influenced"
        shop.later(days=7)
        assert shop.convert("u", order_id="C-2") is None


def test_a_conversion_time_given_is_the_end_of_the_windows(shop: Shop) -> None:
    nid = shop.send(["u"])
    clicked_at = shop.clock.now
    shop.beacon(nid, "u", "clicked")
    shop.later(days=2)
    within = shop.convert("u", order_id="D-1", at=clicked_at + timedelta(hours=23))
    assert within["kind"] == "direct"
    # before the click: nothing it could be attributed to
    assert shop.convert("u", order_id="D-2", at=clicked_at - timedelta(minutes=1)) is None


def test_the_latest_click_wins_over_an_earlier_one_and_over_a_later_display(shop: Shop) -> None:
    first = shop.send(["u"], title="First")
    shop.beacon(first, "u", "clicked")
    shop.later(hours=1)
    second = shop.send(["u"], title="Second")
    shop.beacon(second, "u", "clicked")
    shop.later(hours=1)
    third = shop.send(["u"], title="Third")
    shop.beacon(third, "u", "displayed")  # seen, not clicked: a click outranks it
    shop.later(minutes=5)
    assert shop.convert("u", value="5", currency="EUR", order_id="E-1")["notification_id"] == second
    assert [shop.stats(n)["conversions"] for n in (first, second, third)] == [0, 1, 0]


def test_the_same_order_counts_once_and_answers_its_first_attribution(shop: Shop) -> None:
    nid = shop.send(["u", "v"])
    shop.beacon(nid, "u", "clicked")
    shop.later(minutes=10)
    first = shop.convert("u", value="100", currency="EUR", order_id="F-1")
    assert first is not None and first["kind"] == "direct"
    assert shop.convert("u", value="100", currency="EUR", order_id="F-1") == first
    # another user, another value, the same order id: still the first one's
    assert shop.convert("v", value="1", currency="USD", order_id="F-1") == first
    assert shop.stats(nid)["conversions"] == 1
    assert shop.stats(nid)["revenue"] == {"EUR": "100.00"}
    assert len(shop.rows()) == 1


def test_one_order_reported_by_two_threads_at_once_is_stored_once(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    results: list[Any] = []
    start = threading.Barrier(4)

    def report() -> None:
        start.wait()
        with use_clock(shop.clock):
            results.append(shop.convert("u", value="3", currency="EUR", order_id="G-1"))

    threads = [threading.Thread(target=report) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and all(r == results[0] for r in results) and results[0]
    assert len(shop.rows()) == 1
    assert shop.stats(nid)["conversions"] == 1 and shop.stats(nid)["revenue"] == {"EUR": "3.00"}


def test_values_are_added_exactly_per_currency(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    shop.later(minutes=1)
    # 0.1 + 0.2 as floats is 0.30000000000000004; kept as ten-thousandths it is 0.30
    for i, (value, currency) in enumerate([(0.1, "EUR"), (Decimal("0.2"), "EUR"),
                                           ("999999999999.9999", "PLN"), (7, "BHD"),
                                           ("0.0005", "BHD")]):
        shop.convert("u", value=value, currency=currency, order_id=f"H-{i}")
    assert shop.stats(nid)["revenue"] == {"BHD": "7.0005", "EUR": "0.30",
                                          "PLN": "999999999999.9999"}
    amounts = {r.order_id: (r.amount, r.currency) for r in shop.rows()}
    assert amounts["H-0"] == (1000, "EUR") and amounts["H-2"] == (9999999999999999, "PLN")


class BrokenZone(tzinfo):
    """A tzinfo of a caller's that answers what no offset can be."""

    def __init__(self, offset: Any) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> Any:
        return self.offset


def test_a_narrow_decimal_context_of_the_host_changes_nothing(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    with localcontext(prec=6):
        shop.convert("u", value=Decimal("123456.78"), currency="EUR", order_id="N-1")
    assert shop.stats(nid)["revenue"] == {"EUR": "123456.78"}


def test_revenue_past_its_exact_sum_is_refused_and_counts_nothing(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    S = shop.host.webpush.models.Stat
    near = 2**63 - 1 - 9999999999999999  # as if 922 orders of the largest value were counted
    shop.convert("u", value="1", currency="EUR", order_id="M-0")
    with shop.host.app.app_context():
        shop.host.db.session.execute(sa.update(S).where(
            S.notification_id == nid, S.dimension == "revenue").values(amount=near))
        shop.host.db.session.commit()
    shop.convert("u", value="999999999999.9999", currency="EUR", order_id="M-1")  # just fits
    with pytest.raises(InvalidConversion, match="exceed"):
        shop.convert("u", value="0.0001", currency="EUR", order_id="M-2")
    assert [r.order_id for r in shop.rows()] == ["M-0", "M-1"]
    assert shop.stats(nid)["conversions"] == 2
    assert shop.stats(nid)["revenue"] == {"EUR": "922337203685477.5807"}


@pytest.mark.parametrize(("kw", "words"), [
    ({"value": "10"}, "needs its currency"),
    ({"currency": "EUR"}, "needs a value"),
    ({"value": "10", "currency": "eur"}, "ISO 4217"),
    ({"value": "10", "currency": "XYZ"}, "ISO 4217"),
    ({"value": Decimal("-1"), "currency": "EUR"}, "negative"),
    ({"value": "-1", "currency": "EUR"}, "no sign"),
    ({"value": Decimal("1.00001"), "currency": "EUR"}, "4 decimal places"),
    ({"value": "1.00001", "currency": "EUR"}, "up to 4 decimals"),
    ({"value": "0000000000001", "currency": "EUR"}, "up to 12"),
    ({"value": " 10", "currency": "EUR"}, "digits"),
    ({"value": "1_000", "currency": "EUR"}, "digits"),
    ({"value": "1e3", "currency": "EUR"}, "digits"),
    ({"value": float("nan"), "currency": "EUR"}, "finite"),
    ({"value": float("inf"), "currency": "EUR"}, "finite"),
    ({"value": True, "currency": "EUR"}, "decimal amount"),
    ({"value": 10**12, "currency": "EUR"}, "below"),
    ({"order_id": ""}, "order_id"),
    ({"order_id": "a\x00b"}, "order_id"),
    ({"order_id": "\ud800"}, "order_id"),
    ({"order_id": "x" * 201}, "order_id"),
    ({"order_id": ["A-1"]}, "order_id"),
    ({"order_id": 10**5000}, "64 bits"),
    ({"order_id": 2**63}, "64 bits"),
    ({"at": datetime(2026, 12, 1, 9, 0)}, "timezone-aware"),
    ({"at": "2026-12-01T09:00:00Z"}, "timezone-aware"),
    ({"at": datetime(1999, 12, 31, tzinfo=UTC)}, "after 2000"),
    ({"at": datetime.max.replace(tzinfo=UTC)}, "future"),
    ({"at": datetime(2026, 12, 1, tzinfo=BrokenZone(timedelta(hours=30)))}, "timezone-aware"),
    ({"at": datetime(2026, 12, 1, tzinfo=BrokenZone("+01:00"))}, "timezone-aware"),
])
def test_a_bad_conversion_is_refused_saying_why_and_stores_nothing(
        shop: Shop, kw: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidConversion, match=words):
        shop.convert("u", **kw)
    assert shop.rows() == []


@fuzz_settings(0.5)
@given(user=st.one_of(st.just("u"), nasty_text(), huge_integers(), wrong_types()),
       value=st.one_of(st.none(), nasty_text(), huge_integers(), nasty_floats(), wrong_types(),
                       st.decimals(allow_nan=True, allow_infinity=True)),
       currency=st.one_of(st.none(), st.sampled_from(["EUR", "PLN", "eur", "€"]), nasty_text(),
                          wrong_types()),
       order_id=st.one_of(st.none(), nasty_text(), huge_integers(), wrong_types()),
       at=st.one_of(st.none(), extreme_datetimes(), wrong_types()))
def test_fuzz_record_conversion_raises_only_webpush_errors(
        sending: SendingHost, user: Any, value: Any, currency: Any, order_id: Any,
        at: Any) -> None:
    with sending.app.app_context():
        try:
            sending.webpush.record_conversion(user, value=value, currency=currency,
                                              order_id=order_id, at=at)
        except WebPushError:
            sending.db.session.rollback()


def test_erasing_a_user_erases_their_conversions_and_keeps_the_counts(shop: Shop) -> None:
    nid = shop.send(["gone", "stays"])
    shop.beacon(nid, "gone", "clicked")
    shop.beacon(nid, "stays", "clicked")
    shop.later(minutes=1)
    shop.convert("gone", value="12.50", currency="EUR", order_id="order-of-gone")
    shop.convert("stays", value="1", currency="EUR", order_id="order-of-stays")
    with shop.host.app.app_context():
        exported = shop.host.webpush.export_user("gone")
        assert exported["conversions"] == [{
            "order_id": "order-of-gone", "kind": "direct", "notification_id": nid,
            "value": "12.50", "currency": "EUR", "at": exported["conversions"][0]["at"]}]
        assert shop.host.webpush.forget_user("gone")["conversions"] == 1
        assert shop.host.webpush.export_user("gone")["conversions"] == []
    assert [r.order_id for r in shop.rows()] == ["order-of-stays"]
    stats = shop.stats(nid)
    assert stats["conversions"] == 2 and stats["revenue"] == {"EUR": "13.50"}


def test_pruning_a_notification_keeps_its_conversions_and_unlinks_the_deliveries(
        shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    shop.convert("u", value="2", currency="EUR", order_id="P-1")
    shop.later(days=40)
    with shop.host.app.app_context():
        assert shop.host.webpush.prune(timedelta(days=30))["deliveries"] == 1
    [row] = shop.rows()
    assert (row.notification_id, row.delivery_id, row.kind) == (nid, None, "direct")
    assert shop.stats(nid)["revenue"] == {"EUR": "2.00"}


@pytest.mark.parametrize("setting", [0, -1, 91 * 86400, 10**30, 1.5, "1 day", True,
                                     timedelta(0), timedelta(days=91)])
def test_a_window_outside_one_second_to_90_days_is_refused_at_init_app(
        make_app: Any, setting: Any) -> None:
    with pytest.raises(ConfigurationError, match="WEBPUSH_ATTRIBUTION_WINDOW"):
        make_app(WEBPUSH_ATTRIBUTION_WINDOW=setting)


# -- the push API: POST /webpush/api/v1/conversions ---------------------------------------------

CONVERSIONS = f"{BASE}/conversions"


def post(shop: Shop, key: str | None, body: Any, **headers: str) -> Any:
    """POST conversions; the answer checked against the OpenAPI document."""
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    client = shop.host.app.test_client()
    if isinstance(body, bytes):
        response = client.post(CONVERSIONS, data=body, headers=headers,
                               content_type="application/json")
    else:
        response = client.post(CONVERSIONS, json=body, headers=headers)
    response.body = check_answer("POST", CONVERSIONS, response)
    return response


def api_key(shop: Shop, *scopes: str) -> str:
    with shop.host.app.app_context():
        return create_key(shop.host.db, shop.host.webpush.models, "shop back end",
                          scopes or ("conversions",))[1]


def test_the_api_records_an_order_attributes_it_and_counts_it_once(shop: Shop) -> None:
    nid = shop.send(["1042"])
    shop.beacon(nid, "1042", "clicked")
    shop.later(hours=1)
    key = api_key(shop)
    # a JSON number is read as an exact decimal, not a float
    order = {"user_id": 1042, "value": 129.9, "currency": "EUR", "order_id": 10427}
    first = post(shop, key, order)
    assert first.status_code == 201, first.body
    assert first.body == {"id": first.body["id"], "attributed": True, "kind": "direct",
                          "notification_id": nid,
                          "delivery_id": delivery_of(shop, nid, "1042"),
                          "order_id": "10427", "duplicate": False, "replayed": False}
    again = post(shop, key, {**order, "value": "129.90"})
    assert again.status_code == 200 and again.body["duplicate"] is True
    assert again.body["kind"] == "direct" and again.body["id"] == first.body["id"]
    assert shop.stats(nid)["revenue"] == {"EUR": "129.90"}
    assert shop.stats(nid)["conversions"] == 1
    none = post(shop, key, {"user_id": "someone else"})
    assert none.status_code == 201
    assert (none.body["attributed"], none.body["kind"], none.body["notification_id"]) == (
        False, None, None)


def test_an_idempotency_key_replays_the_answer_and_refuses_another_body(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "displayed")
    key = api_key(shop)
    body = {"user_id": "u", "value": "5", "currency": "PLN"}  # no order id: the key alone
    first = post(shop, key, body, **{"Idempotency-Key": "checkout-77"})
    assert first.status_code == 201 and first.body["kind"] == "influenced"
    shop.later(minutes=5)  # a time not given is not part of the request
    replay = post(shop, key, {"currency": "PLN", "value": "5.00", "user_id": "u"},
                  **{"Idempotency-Key": "checkout-77"})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == {**first.body, "replayed": True}
    other = post(shop, key, {**body, "value": "6"}, **{"Idempotency-Key": "checkout-77"})
    assert (other.status_code, other.body["error"]) == (409, "idempotency_conflict")
    assert shop.stats(nid)["influenced_conversions"] == 1 and len(shop.rows()) == 1
    # another API key's same Idempotency-Key is its own
    mine = post(shop, api_key(shop), body, **{"Idempotency-Key": "checkout-77"})
    assert mine.status_code == 201 and len(shop.rows()) == 2


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"value": "5", "currency": "EUR"}, 400, "bad_request"),  # no user_id
    ({"user_id": "u", "colour": "red"}, 400, "bad_request"),
    ({"user_id": "u", "value": True, "currency": "EUR"}, 400, "bad_request"),
    ({"user_id": "u", "value": [5], "currency": "EUR"}, 400, "bad_request"),
    ({"user_id": "u", "at": "2026-12-01T09:00:00"}, 400, "bad_request"),  # no offset
    ({"user_id": "u", "order_id": {"id": 1}}, 400, "bad_request"),
    ({"user_id": "", "order_id": "x"}, 400, "bad_request"),
    ({"user_id": "a\u0000b"}, 400, "bad_request"),
    (["u"], 400, "bad_request"),
    (b'{"user_id": "u", "value": 1e400, "currency": "EUR"}', 422, "invalid_conversion"),
    (b'{"user_id": "u", "value": NaN, "currency": "EUR"}', 400, "bad_request"),
    ({"user_id": "u", "value": "5"}, 422, "invalid_conversion"),
    ({"user_id": "u", "value": 1.23456, "currency": "EUR"}, 422, "invalid_conversion"),
    ({"user_id": "u", "value": "5", "currency": "ZZZ"}, 422, "invalid_conversion"),
    ({"user_id": "u", "order_id": "   "}, 422, "invalid_conversion"),
    ({"user_id": "u", "at": "2999-01-01T00:00:00Z"}, 422, "invalid_conversion"),
])
def test_a_bad_request_is_refused_with_its_reason_and_stores_nothing(
        shop: Shop, body: Any, status: int, error: str) -> None:
    answer = post(shop, api_key(shop), body)
    assert (answer.status_code, answer.body["error"]) == (status, error), answer.body
    assert answer.body["message"]
    assert shop.rows() == []


def test_the_conversions_scope_is_needed(shop: Shop) -> None:
    answer = post(shop, api_key(shop, "send", "stats"), {"user_id": "u"})
    assert (answer.status_code, answer.body["error"]) == (403, "insufficient_scope")
    assert post(shop, None, {"user_id": "u"}).status_code == 401
    assert shop.rows() == []


def test_the_notification_api_shows_the_conversions(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    shop.convert("u", value="19.99", currency="PLN", order_id="Z-1")
    key = api_key(shop, "stats")
    path = f"{BASE}/notifications/{nid}"
    answer = shop.host.app.test_client().get(path, headers={"Authorization": f"Bearer {key}"})
    body = check_answer("GET", path, answer)
    assert body is not None
    stats = body["stats"]
    assert (stats["conversions"], stats["influenced_conversions"], stats["conversion_rate"],
            stats["revenue"]) == (1, 0, 1.0, {"PLN": "19.99"})


# -- the admin pages ------------------------------------------------------------------------------


@pytest.mark.parametrize(("language", "words"), [("en", ["€1,520.4049", "PLN89.99"]),
                                                 ("pl", ["1\xa0520,4049\xa0€", "89,99\xa0zł"])])
def test_the_admin_page_shows_the_orders_and_revenue_in_the_staff_language(
        shop: Shop, language: str, words: list[str]) -> None:
    nid = shop.send(["u", "v"])
    shop.beacon(nid, "u", "clicked")
    shop.beacon(nid, "v", "displayed")
    shop.convert("u", value="1520.4049", currency="EUR", order_id="R-1")  # never rounded
    shop.convert("u", value="89.99", currency="PLN", order_id="R-2")
    shop.convert("v", value="7", currency="EUR", order_id="R-3")
    http = admin_http(shop.host)
    page = http.get(f"/webpush/admin/notifications/{nid}",
                    headers={"Accept-Language": language}).get_data(as_text=True)
    orders = page[page.index("data-conversions"):]
    orders = orders[:orders.index("</dl>")]
    assert 'data-figure="conversions">2<' in orders
    assert 'data-figure="influenced_conversions">1<' in orders
    assert "100.0%" in orders or "100,0%" in orders  # 2 direct conversions, 2 sent
    for word in words:
        assert word in orders, orders


def test_after_an_erase_a_replayed_key_records_anew_and_never_shows_another_customer(
        shop: Shop) -> None:
    key = api_key(shop)
    erased = post(shop, key, {"user_id": "gone", "order_id": "K-1"}, **{"Idempotency-Key": "k"})
    assert erased.status_code == 201
    with shop.host.app.app_context():
        shop.host.webpush.forget_user("gone")
    # the next conversion may get the erased one's id on SQLite
    other = post(shop, key, {"user_id": "other", "order_id": "K-2"})
    assert other.status_code == 201
    again = post(shop, key, {"user_id": "gone", "order_id": "K-1"}, **{"Idempotency-Key": "k"})
    assert again.status_code == 201 and again.body["order_id"] == "K-1"
    assert again.body["replayed"] is False


def test_two_requests_with_one_idempotency_key_at_once_count_one_conversion(shop: Shop) -> None:
    nid = shop.send(["u"])
    shop.beacon(nid, "u", "clicked")
    key = api_key(shop)
    start = threading.Barrier(3)
    answers: list[Any] = []

    def report() -> None:
        start.wait()
        with use_clock(shop.clock):
            answers.append(post(shop, key, {"user_id": "u", "value": "10", "currency": "EUR"},
                                **{"Idempotency-Key": "same"}))

    threads = [threading.Thread(target=report) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(a.status_code for a in answers) == [200, 200, 201]  # one recorded, two replays
    assert len({a.body["id"] for a in answers}) == 1
    assert len(shop.rows()) == 1
    assert shop.stats(nid)["conversions"] == 1 and shop.stats(nid)["revenue"] == {"EUR": "10.00"}
