"""A/B variants: each user gets one variant, by weight and always the same; with a test share,
the rest gets the winner once ``winner_after`` has passed; each variant has its own funnel.

Pushes are sent for real by RQ jobs run in this process (pipeline_driver) on the real Redis,
to the local push service, which decrypts them; time is a ManualClock. SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost, admin_http
from pipeline_driver import InProcessQueue

from flask_webpush_targeted import InvalidNotification, PayloadTooLarge
from flask_webpush_targeted.clock import ManualClock, use_clock
from flask_webpush_targeted.variants import Split, assigned, in_test, p_value

EVENTS = "/webpush/events"


class Lab:
    """A sending host on a manual clock whose jobs run here; users subscribed on demand."""

    def __init__(self, host: SendingHost) -> None:
        self.host = host
        self.clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
        self.queue = InProcessQueue(host.app, self.clock)
        self.subs: dict[str, list[Any]] = {}

    def users(self, count: int, prefix: str = "u") -> list[str]:
        names = [f"{prefix}{i}" for i in range(count)]
        for name in names:
            self.subs.setdefault(name, []).append(self.host.subscribe(name))
        return names

    def notify(self, users: list[str], **kw: Any) -> int:
        kw.setdefault("title", "Winter sale")
        with self.host.app.app_context():
            nid = int(self.host.webpush.notify_users(users, **kw).id)
        self.queue.run_all()
        return nid

    def titles(self, user: str) -> list[str]:
        """What each of the user's devices received (titles, in order)."""
        return [p.notification()["title"] for sub in self.subs[user]
                for p in self.host.push_service.received_for(sub.endpoint) if p.ok]

    def token(self, user: str) -> str:
        [sub] = self.subs[user][:1]
        return str([p for p in self.host.push_service.received_for(sub.endpoint)
                    if p.ok][-1].notification()["token"])

    def click(self, user: str) -> None:
        answer = self.host.app.test_client(use_cookies=False).post(
            EVENTS, json={"token": self.token(user), "event": "clicked"},
            environ_base={"REMOTE_ADDR": f"10.8.{len(user)}.{hash(user) % 250}"})
        assert answer.status_code == 200, answer.get_json()

    def stats(self, nid: int) -> dict[str, Any]:
        with self.host.app.app_context():
            return dict(self.host.webpush.stats(nid))


@pytest.fixture
def lab(sending: SendingHost) -> Any:
    lab = Lab(sending)
    with use_clock(lab.clock):
        yield lab


THREE = [{"title": "A: 20% off", "weight": 50}, {"title": "B: Free delivery", "weight": 30},
         {"title": "C: Last day", "body": "Ends tonight", "weight": 20}]


def test_a_thousand_users_split_by_the_weights_each_getting_its_variant(lab: Lab) -> None:
    users = lab.users(1000)
    nid = lab.notify(users, variants=THREE)
    got = Counter()
    for user in users:
        [title] = lab.titles(user)
        got[title] += 1
    for variant in THREE:
        share = got[variant["title"]] / len(users)
        assert abs(share - variant["weight"] / 100) <= 0.03, (variant, share, got)
    stats = lab.stats(nid)
    assert [v["sent"] for v in stats["variants"]] == [got[v["title"]] for v in THREE]
    assert [v["title"] for v in stats["variants"]] == [v["title"] for v in THREE]
    assert sum(v["sent"] for v in stats["variants"]) == stats["sent"] == 1000
    D = lab.host.webpush.models.Delivery
    with lab.host.app.app_context():
        stored = Counter(lab.host.db.session.scalars(
            sa.select(D.variant).where(D.notification_id == nid)))
    assert stored == Counter({i: got[v["title"]] for i, v in enumerate(THREE)})


def test_a_user_gets_the_same_variant_on_every_device_and_every_call(lab: Lab) -> None:
    users = lab.users(40)
    for user in users[:10]:
        lab.subs[user].append(lab.host.subscribe(user))  # a second device
    nid = lab.notify(users, variants=THREE[:2])
    split = Split((50, 30))
    for user in users:
        expected = THREE[assigned(split, nid, user)]["title"]
        assert set(lab.titles(user)) == {expected}, user
        assert len(lab.titles(user)) == len(lab.subs[user])
    # the assignment depends on the notification and the user only
    assert [assigned(split, nid, u) for u in users] == [assigned(split, nid, u) for u in users]


def test_with_a_test_share_the_rest_gets_the_winner_once_the_wait_is_over(lab: Lab) -> None:
    users = lab.users(200)
    nid = lab.notify(users, variants=[{"title": "A"}, {"title": "B"}], test_share=0.25,
                     winner_after=timedelta(hours=2), winner_by="clicks")
    split = Split((1, 1), 0.25, 7200)
    tested = [u for u in users if in_test(split, nid, u)]
    rest = [u for u in users if u not in tested]
    assert 30 <= len(tested) <= 70  # a quarter of 200, by a hash
    assert all(lab.titles(u) for u in tested) and not any(lab.titles(u) for u in rest)
    for user in tested:  # B's readers click; A's do not
        if lab.titles(user) == ["B"]:
            lab.click(user)
    lab.clock.advance(3599)
    lab.queue.run_all()
    assert not any(lab.titles(u) for u in rest)  # an hour in: still waiting
    lab.clock.advance(3602)
    lab.queue.run_all()
    assert all(lab.titles(u) == ["B"] for u in rest)
    stats = lab.stats(nid)
    assert [v["winner"] for v in stats["variants"]] == [False, True]
    assert stats["variants"][1]["sent"] == len(rest) + sum(
        lab.titles(u) == ["B"] for u in tested)
    assert stats["sent"] == 200


def test_the_winner_by_conversions_is_the_variant_whose_clicks_led_to_orders(lab: Lab) -> None:
    users = lab.users(120)
    nid = lab.notify(users, variants=[{"title": "A"}, {"title": "B"}], test_share=0.5,
                     winner_after=3600, winner_by="conversions")
    split = Split((1, 1), 0.5, 3600)
    tested = [u for u in users if in_test(split, nid, u)]
    for user in tested:
        lab.click(user)  # everyone clicks: clicks alone would pick A on the tie
        if lab.titles(user) == ["B"]:
            with lab.host.app.app_context():
                lab.host.webpush.record_conversion(user, value="10", currency="EUR",
                                                   order_id=f"o-{user}")
    lab.clock.advance(3601)
    lab.queue.run_all()
    rest = [u for u in users if u not in tested]
    assert rest and all(lab.titles(u) == ["B"] for u in rest)
    variants = lab.stats(nid)["variants"]
    assert variants[1]["conversions"] > 0 and variants[0]["conversions"] == 0
    assert variants[1]["revenue"] == {"EUR": f"{10 * variants[1]['conversions']}.00"}


def test_each_variant_is_held_to_the_payload_limit_when_notify_users_is_called(
        lab: Lab) -> None:
    users = lab.users(2)
    with lab.host.app.app_context(), pytest.raises(PayloadTooLarge, match=r"variants\[1\]"):
        lab.host.webpush.notify_users(users, title="Sale", variants=[
            {"title": "Short"}, {"title": "Long", "body": "x" * 4000}])
    N = lab.host.webpush.models.Notification
    with lab.host.app.app_context():
        assert lab.host.db.session.scalar(sa.select(sa.func.count()).select_from(N)) == 0


@pytest.mark.parametrize(("kw", "words"), [
    ({"variants": [{"title": "A"}]}, "2 to 5"),
    ({"variants": [{"title": str(i)} for i in range(6)]}, "2 to 5"),
    ({"variants": "AB"}, "list"),
    ({"variants": [{"title": "A"}, {"colour": "red"}]}, "unknown field"),
    ({"variants": [{"title": "A"}, {"title": "B", "weight": 0}]}, "weight"),
    ({"variants": [{"title": "A"}, {"title": "B", "weight": 1.5}]}, "weight"),
    ({"variants": [{"title": "A"}, {"title": "B", "weight": True}]}, "weight"),
    ({"variants": [{"title": "A"}, {"title": ""}]}, r"variants\[1\]"),
    ({"variants": [{"title": "A"}, {"url": "https://evil.example/"}]}, r"variants\[1\]"),
    ({"variants": [{"title": "A"}, {"title": "B"}], "test_share": 0.2}, "go together"),
    ({"variants": [{"title": "A"}, {"title": "B"}], "test_share": 1.0,
      "winner_after": 3600}, "between 0 and 1"),
    ({"variants": [{"title": "A"}, {"title": "B"}], "test_share": float("nan"),
      "winner_after": 3600}, "between 0 and 1"),
    ({"variants": [{"title": "A"}, {"title": "B"}], "test_share": 0.2,
      "winner_after": timedelta(seconds=5)}, "a minute"),
    ({"variants": [{"title": "A"}, {"title": "B"}], "winner_by": "opens"}, "winner_by"),
    ({"test_share": 0.2, "winner_after": 3600}, "need variants"),
])
def test_bad_variants_are_refused_saying_why(lab: Lab, kw: dict[str, Any], words: str) -> None:
    with lab.host.app.app_context(), pytest.raises(InvalidNotification, match=words):
        lab.host.webpush.notify_users(["u0"], title="Sale", **kw)


def test_the_p_value_is_a_two_proportion_z_test() -> None:
    # 100 of 1,000 against 130 of 1,000: z = 2.10, p = 0.0355 (two-sided)
    assert abs(p_value(100, 1000, 130, 1000) - 0.0355) < 0.0005  # type: ignore[operator]
    assert p_value(10, 100, 10, 100) == 1.0
    assert p_value(0, 0, 5, 10) is None and p_value(0, 10, 0, 10) is None


def test_the_admin_page_shows_the_variants_side_by_side_and_whether_it_means_anything(
        lab: Lab) -> None:
    users = lab.users(30)
    nid = lab.notify(users, variants=[{"title": "A: 20% off"}, {"title": "B: Free delivery"}])
    lab.click(users[0])  # one click in 30: no difference can mean anything
    page = admin_http(lab.host).get(f"/webpush/admin/notifications/{nid}").get_data(
        as_text=True)
    table = page[page.index("data-variants"):]
    table = table[:table.index("</table>")]
    assert "A: 20% off" in table and "B: Free delivery" in table
    assert "not significant" in page[page.index("data-variants"):]


def test_the_push_api_sends_variants_and_shows_each_variants_figures(lab: Lab) -> None:
    from openapi_check import BASE, check_answer

    from flask_webpush_targeted.push_api.keys import create_key

    users = lab.users(20)
    with lab.host.app.app_context():
        key = create_key(lab.host.db, lab.host.webpush.models, "crm", ("send", "stats"))[1]
    http = lab.host.app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    path = f"{BASE}/notifications"
    body = {"user_ids": users, "title": "Sale", "variants": [
        {"title": "A", "weight": 3}, {"title": {"en": "B", "pl": "B po polsku"}, "weight": 1}]}
    answer = http.post(path, json=body, headers=headers)
    created = check_answer("POST", path, answer)
    assert answer.status_code == 202 and created is not None
    lab.queue.run_all()
    one = f"{path}/{created['id']}"
    shown = check_answer("GET", one, http.get(one, headers=headers))
    assert shown is not None
    variants = shown["stats"]["variants"]
    assert [v["title"] for v in variants] == ["A", "B"]  # the default language's text
    assert [v["weight"] for v in variants] == [3, 1]
    assert sum(v["sent"] for v in variants) == 20
    bad = http.post(path, json={**body, "variants": [{"title": "A"}, {"weight": "heavy"}]},
                    headers=headers)
    assert check_answer("POST", path, bad) is not None and bad.status_code == 400


def test_more_orders_than_pushes_leave_no_test_and_no_error(lab: Lab) -> None:
    users = lab.users(4)
    nid = lab.notify(users, variants=[{"title": "A"}, {"title": "B"}],
                     winner_by="conversions")
    for user in users:
        lab.click(user)
        for order in range(5):
            with lab.host.app.app_context():
                lab.host.webpush.record_conversion(user, order_id=f"{user}-{order}")
    variants = lab.stats(nid)["variants"]
    assert sum(v["conversions"] for v in variants) == 20
    assert variants[1]["p_value"] is None and not variants[1]["significant"]
    page = admin_http(lab.host).get(f"/webpush/admin/notifications/{nid}")
    assert page.status_code == 200
    assert "no test possible yet" in page.get_data(as_text=True)


def test_a_huge_winner_after_is_refused(lab: Lab) -> None:
    with lab.host.app.app_context(), pytest.raises(InvalidNotification, match="winner_after"):
        lab.host.webpush.notify_users(["u0"], title="S", variants=[{"title": "A"},
                                                                   {"title": "B"}],
                                      test_share=0.5, winner_after=10**400)


def test_a_click_keeps_only_an_action_its_own_variant_offered(lab: Lab) -> None:
    users = lab.users(30)
    nid = lab.notify(users, variants=[
        {"title": "A", "actions": [{"action": "buy", "title": "Buy"}]},
        {"title": "B", "actions": [{"action": "later", "title": "Later"}]}])
    D = lab.host.webpush.models.Delivery
    for user in users:
        own = "buy" if lab.titles(user) == ["A"] else "later"
        other = "later" if own == "buy" else "buy"
        answer = lab.host.app.test_client(use_cookies=False).post(
            EVENTS, json={"token": lab.token(user), "event": "clicked", "action": other},
            environ_base={"REMOTE_ADDR": f"10.7.{len(user)}.{hash(user) % 250}"})
        assert answer.status_code == 200
    with lab.host.app.app_context():
        actions = set(lab.host.db.session.scalars(sa.select(D.action).where(
            D.notification_id == nid)))
    assert actions == {None}  # each asked for the other variant's action: not kept


def test_the_rest_waits_while_the_test_is_still_being_sent(lab: Lab) -> None:
    users = lab.users(30)
    nid = lab.notify(users, variants=[{"title": "A"}, {"title": "B"}], test_share=0.5,
                     winner_after=60, rate_per_minute=2)
    split = Split((1, 1), 0.5, 60)
    tested = [u for u in users if in_test(split, nid, u)]
    rest = [u for u in users if u not in tested]
    lab.clock.advance(61)
    lab.queue.run_all()
    N = lab.host.webpush.models.Notification
    with lab.host.app.app_context():
        assert lab.host.db.session.scalar(sa.select(N.winner).where(N.id == nid)) is None
    assert not any(lab.titles(u) for u in rest)  # no winner chosen on two sends
    while not all(lab.titles(u) for u in tested):  # the test's throttled sends go on
        with lab.host.app.app_context():
            assert lab.host.db.session.scalar(sa.select(N.winner).where(N.id == nid)) is None
        lab.clock.advance(30)
        lab.queue.run_all()
    for _ in range(30):  # then the winner goes to the rest, at the same rate
        lab.clock.advance(60)
        lab.queue.run_all()
    with lab.host.app.app_context():
        winner = lab.host.db.session.scalar(sa.select(N.winner).where(N.id == nid))
    assert winner is not None
    assert all(lab.titles(u) == [["A", "B"][winner]] for u in rest)
