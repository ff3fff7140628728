"""The push services' rules (transport/services.py), applied at send time.

The table and its lookup by host; the sender capping the TTL header, taking WNS's 406 as a
throttle and keeping Apple's VAPID JWT lifetime; the local push service posing as each
real service (``pose_as``) and enforcing its rules; and real ``flask webpush worker``
processes against it, on SQLite and PostgreSQL, with the service named by
WEBPUSH_EXTRA_PUSH_SERVICE_KINDS.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SendingHost
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC
from py_vapid import Vapid02

from flask_webpush_targeted.config import validate_settings
from flask_webpush_targeted.exceptions import ConfigurationError
from flask_webpush_targeted.statuses import Outcome
from flask_webpush_targeted.testing import LocalPushService
from flask_webpush_targeted.testing.push_service import POSES, b64url_decode
from flask_webpush_targeted.transport import vapid as vapid_module
from flask_webpush_targeted.transport.endpoints import KNOWN_PUSH_SERVICE_HOSTS
from flask_webpush_targeted.transport.guard import EndpointGuard
from flask_webpush_targeted.transport.sender import Message, PushResult, PushSender, classify
from flask_webpush_targeted.transport.services import (
    DEFAULT_RULE,
    PUSH_SERVICE_RULES,
    RULES_BY_NAME,
    PushServiceRule,
    rule_for_host,
    rule_for_origin,
)
from flask_webpush_targeted.transport.vapid import VapidHeaders, load_vapid_private_key

DAY = 86400
CAPS = {"fcm": 2_419_200, "mozilla": 2_592_000, "apple": 2_592_000}


# -- the table and its lookup ------------------------------------------------------------------


@pytest.mark.parametrize(("host", "name"), [
    ("fcm.googleapis.com", "fcm"),
    ("android.googleapis.com", "fcm"),
    ("FCM.GoogleAPIs.com", "fcm"),
    ("fcm.googleapis.com.", "fcm"),
    ("updates.push.services.mozilla.com", "mozilla"),
    ("push.services.mozilla.com", "mozilla"),
    ("web.push.apple.com", "apple"),
    ("api.push.apple.com", "apple"),
    ("Web.Push.Apple.COM", "apple"),
    ("wns2-par02p.notify.windows.com", "wns"),
    ("db5p.notify.windows.com", "wns"),
])
def test_a_push_service_host_finds_its_rule_in_any_case(host: str, name: str) -> None:
    assert rule_for_host(host).name == name


@pytest.mark.parametrize("host", [
    "evilfcm.googleapis.com",            # no dot before the suffix
    "evilfcm.googleapis.com.example",    # the suffix in the middle
    "fcm.googleapis.com.example",
    "googleapis.com",
    "push.apple.com.evil.example",
    "xpush.apple.com",
    "notify.windows.com.example",
    "evilnotify.windows.com",
    "mozilla.com",
    "127.0.0.1",
    "",
])
def test_a_host_of_no_push_service_gets_the_default_rule(host: str) -> None:
    assert rule_for_host(host) is DEFAULT_RULE


def test_the_default_rule_caps_nothing_and_throttles_with_429_only() -> None:
    assert DEFAULT_RULE.max_ttl is None
    assert DEFAULT_RULE.ttl_header(10**9) == 10**9
    assert DEFAULT_RULE.throttle_statuses == frozenset({429})
    assert DEFAULT_RULE.vapid_max_lifetime == DAY and DEFAULT_RULE.vapid_min_reuse == 0


def test_the_table_holds_each_service_s_figures() -> None:
    fcm, mozilla, apple, wns = (RULES_BY_NAME[n] for n in ("fcm", "mozilla", "apple", "wns"))
    assert {r.name for r in PUSH_SERVICE_RULES} == {"fcm", "mozilla", "apple", "wns"}
    assert (fcm.max_ttl, mozilla.max_ttl, apple.max_ttl) == (2_419_200, 2_592_000, 2_592_000)
    assert wns.max_ttl is None and wns.ttl_required
    assert 406 in wns.throttle_statuses and 406 not in fcm.throttle_statuses
    assert all(429 in r.throttle_statuses for r in PUSH_SERVICE_RULES)
    assert (apple.vapid_max_lifetime, apple.vapid_min_reuse) == (DAY, 3600)
    assert all(r.vapid_max_lifetime <= DAY for r in PUSH_SERVICE_RULES)
    with pytest.raises(AttributeError):
        fcm.max_ttl = 1  # type: ignore[misc]  # frozen


def test_the_table_agrees_with_what_the_local_push_service_enforces_as_each_service() -> None:
    """Two records of the real services, written apart: the sender's and the fake's."""
    for name, pose in POSES.items():
        rule = RULES_BY_NAME[name]
        assert rule.max_ttl == pose.max_ttl, name
        assert pose.throttle_status in rule.throttle_statuses, name


@pytest.mark.parametrize("entry", KNOWN_PUSH_SERVICE_HOSTS)
def test_every_admitted_push_service_host_has_a_rule(entry: str) -> None:
    host = entry.replace("*.", "web.")
    assert rule_for_host(host) is not DEFAULT_RULE


def test_a_ttl_is_capped_only_above_the_cap() -> None:
    fcm = RULES_BY_NAME["fcm"]
    assert fcm.ttl_header(0) == 0
    assert fcm.ttl_header(2_419_200) == 2_419_200
    assert fcm.ttl_header(2_419_201) == 2_419_200
    assert fcm.ttl_header(40 * DAY) == 2_419_200


def test_an_origin_given_a_kind_takes_that_rule_and_others_their_host_s() -> None:
    kinds = {"http://127.0.0.1:8765": "wns"}
    assert rule_for_origin("http://127.0.0.1:8765", kinds).name == "wns"
    assert rule_for_origin("http://127.0.0.1:8766", kinds) is DEFAULT_RULE
    assert rule_for_origin("https://fcm.googleapis.com", kinds).name == "fcm"
    assert rule_for_origin("https://web.push.apple.com", None).name == "apple"
    assert rule_for_origin("https://[::1", None) is DEFAULT_RULE  # unparsable: no rule


# -- classifying answers -------------------------------------------------------------------------


def test_406_from_wns_is_a_throttle_retried_like_429_and_elsewhere_stays_final() -> None:
    wns = RULES_BY_NAME["wns"].throttle_statuses
    as_wns = classify(406, None, "Not Acceptable", throttle=wns)
    as_429 = classify(429, None, "Too Many Requests")
    assert as_wns.outcome == Outcome.RETRY and as_wns.status_code == 406
    assert as_wns.retry_after == as_429.retry_after == 60.0
    assert classify(406, "7", throttle=wns).retry_after == 7.0
    for rule in (DEFAULT_RULE, RULES_BY_NAME["fcm"], RULES_BY_NAME["apple"]):
        final = classify(406, None, throttle=rule.throttle_statuses)
        assert final.outcome == Outcome.FAILED and final.status_code == 406
    assert classify(406, None).outcome == Outcome.FAILED


# -- Apple's JWT rule in the VAPID header cache --------------------------------------------------


def claims_of(header: str) -> dict[str, Any]:
    token = header.split("t=", 1)[1].split(",", 1)[0]
    return dict(json.loads(b64url_decode(token.split(".")[1])))


def headers_over(rule: PushServiceRule, seconds: int, step: int = 60) -> list[tuple[float, str]]:
    signer = VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.example")
    start = 1_800_000_000.0
    return [(start + t, signer.header("https://web.push.apple.com", start + t, rule))
            for t in range(0, seconds, step)]


def test_apple_s_header_lives_at_most_a_day_and_is_kept_at_least_an_hour() -> None:
    seen = headers_over(RULES_BY_NAME["apple"], 3 * DAY)
    first_use: dict[str, float] = {}
    last_use: dict[str, float] = {}
    for now, header in seen:
        exp = claims_of(header)["exp"]
        assert now < exp <= now + DAY, (now, exp)
        first_use.setdefault(header, now)
        last_use[header] = now
    assert len(first_use) >= 3  # renewed, not kept past its expiry
    for header, since in list(first_use.items())[:-1]:
        assert last_use[header] - since >= 3600, "signed again within the hour"


@pytest.mark.parametrize(("lifetime", "reuse"), [(2 * 3600, 3600), (3600, 3600), (1800, 3600)])
def test_a_rule_s_shorter_lifetime_is_kept_and_its_reuse_is_not_cut_short(
        lifetime: int, reuse: int) -> None:
    rule = PushServiceRule("short", vapid_max_lifetime=lifetime, vapid_min_reuse=reuse)
    seen = headers_over(rule, 6 * 3600)
    spans: dict[str, list[float]] = {}
    for now, header in seen:
        assert now < claims_of(header)["exp"] <= now + lifetime
        spans.setdefault(header, []).append(now)
    for times in list(spans.values())[:-1]:
        # as long as the service asks, unless the JWT expires first
        assert times[-1] - times[0] >= min(reuse, lifetime) - 60


def test_a_longer_configured_lifetime_is_cut_to_the_rule_s_day(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vapid_module, "VAPID_LIFETIME", 30 * 3600)
    now = 1_800_000_000.0
    signer = VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.example")
    exp = claims_of(signer.header("https://web.push.apple.com", now,
                                  RULES_BY_NAME["apple"]))["exp"]
    assert now + 12 * 3600 < exp <= now + DAY


def test_two_processes_sign_the_same_header_within_a_step_and_a_new_one_after() -> None:
    """Deterministic signatures on a grid of exp: forked horses send one JWT, not one each."""
    key = load_vapid_private_key(VAPID_PRIVATE)
    one, other, third = (VapidHeaders(key, "mailto:ops@shop.example") for _ in range(3))
    assert one.deterministic
    apple, origin = RULES_BY_NAME["apple"], "https://web.push.apple.com"
    start = 1_800_000_000.0 // 19800 * 19800 + 100  # early in a 5.5 h step
    first = one.header(origin, start, apple)
    assert other.header(origin, start + 3 * 3600, apple) == first
    later = third.header(origin, start + 6 * 3600, apple)  # a process signing in the next step
    assert later != first and claims_of(later)["exp"] > claims_of(first)["exp"]
    assert one.header(origin, start + 6 * 3600, apple) == first  # still in its own reuse
    assert Vapid02.verify(first) and Vapid02.verify(later)


# -- the local push service posing as each service, and the sender in this process --------------


@pytest.fixture
def posing() -> Iterator[Callable[[str | None], LocalPushService]]:
    started: list[LocalPushService] = []

    def start(pose: str | None) -> LocalPushService:
        started.append(LocalPushService(pose_as=pose).start())
        return started[-1]

    yield start
    for service in started:
        service.stop()


def in_process_sender(service: LocalPushService, kinds: dict[str, str] | None = None,
                      **kw: Any) -> PushSender:
    return PushSender(VapidHeaders(load_vapid_private_key(VAPID_PRIVATE), "mailto:ops@shop.test"),
                      EndpointGuard([service.origin]), timeout=(5.0, 5.0), concurrency=8,
                      per_origin=4, service_kinds=kinds, **kw)


def send(push: PushSender, service: LocalPushService, ttl: int,
         count: int = 1) -> tuple[list[dict[str, Any]], dict[Any, PushResult]]:
    subs = [service.new_subscription(VAPID_PUBLIC) for _ in range(count)]
    results: dict[Any, PushResult] = {}
    messages = [Message(i, s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"], b"{}", ttl,
                        "normal", None) for i, s in enumerate(subs)]
    push.send_many(messages, results.update, flush_every=4)
    return subs, results


def post(service: LocalPushService, endpoint: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(endpoint, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def vapid_header(service: LocalPushService, exp: int) -> str:
    signer = Vapid02(private_key=load_vapid_private_key(VAPID_PRIVATE))
    header: str = signer.sign({"aud": service.origin, "exp": exp,
                               "sub": "mailto:ops@shop.example"})["Authorization"]
    return header


@pytest.mark.parametrize("pose", ["fcm", "mozilla", "apple"])
def test_posing_as_a_service_refuses_a_ttl_above_its_cap_and_takes_the_cap(
        posing: Callable[[str | None], LocalPushService], pose: str) -> None:
    service = posing(pose)
    sub = service.new_subscription(VAPID_PUBLIC)
    auth = vapid_header(service, int(time.time()) + 3600)
    cap = CAPS[pose]
    above = post(service, sub["endpoint"], {"Authorization": auth, "TTL": str(cap + 1)})
    assert above[0] == 400 and "exceeds" in above[1]
    assert post(service, sub["endpoint"], {"Authorization": auth, "TTL": str(cap)})[0] == 201
    plain = posing(None)  # not posing: any TTL
    other = plain.new_subscription(VAPID_PUBLIC)
    assert post(plain, other["endpoint"], {"Authorization": vapid_header(plain, int(
        time.time()) + 3600), "TTL": str(cap + 1)})[0] == 201


def test_posing_as_wns_refuses_a_request_without_ttl(
        posing: Callable[[str | None], LocalPushService]) -> None:
    service = posing("wns")
    sub = service.new_subscription(VAPID_PUBLIC)
    status, text = post(service, sub["endpoint"],
                        {"Authorization": vapid_header(service, int(time.time()) + 3600)})
    assert status == 400 and "WNS requires it" in text


def test_posing_as_apple_refuses_a_jwt_expiring_more_than_a_day_ahead_with_403(
        posing: Callable[[str | None], LocalPushService]) -> None:
    apple, plain = posing("apple"), posing(None)
    far = int(time.time()) + DAY + 600
    for service, expected in ((apple, 403), (plain, 401)):
        sub = service.new_subscription(VAPID_PUBLIC)
        status, text = post(service, sub["endpoint"],
                            {"Authorization": vapid_header(service, far), "TTL": "60"})
        assert status == expected and "24 hours" in text, (service.pose_as, status, text)


def test_the_sender_sends_a_ttl_beyond_the_cap_as_the_cap_to_each_service(
        posing: Callable[[str | None], LocalPushService]) -> None:
    for pose, cap in CAPS.items():
        service = posing(pose)
        push = in_process_sender(service, {service.origin: pose})
        try:
            _subs, results = send(push, service, 40 * DAY, count=3)
            assert {r.outcome for r in results.values()} == {Outcome.SENT}, results
            assert [p.ttl for p in service.received] == [cap] * 3
            _subs, results = send(push, service, 3600)  # below the cap: its own
            assert service.received[-1].ttl == 3600
        finally:
            push.close()


def test_without_the_kind_the_sender_sends_the_ttl_as_is_and_the_service_refuses_it(
        posing: Callable[[str | None], LocalPushService]) -> None:
    service = posing("fcm")
    push = in_process_sender(service)
    try:
        _subs, results = send(push, service, 40 * DAY)
        [result] = results.values()
        assert (result.outcome, result.status_code) == (Outcome.FAILED, 400)
        assert service.received == []
    finally:
        push.close()


def test_a_wns_406_pauses_the_origin_like_a_429_and_answers_for_it_with_406(
        posing: Callable[[str | None], LocalPushService]) -> None:
    service = posing("wns")
    now = [1000.0]
    push = in_process_sender(service, {service.origin: "wns"}, clock=lambda: now[0],
                             max_retry_delay=30.0)
    try:
        subs = [service.new_subscription(VAPID_PUBLIC) for _ in range(2)]
        service.throttle(subs[0], times=1)
        results: dict[Any, PushResult] = {}
        one = [Message(0, subs[0]["endpoint"], subs[0]["keys"]["p256dh"],
                       subs[0]["keys"]["auth"], b"{}", 60, "normal", None)]
        push.send_many(one, results.update, flush_every=1)
        assert (results[0].outcome, results[0].status_code) == (Outcome.RETRY, 406)
        assert results[0].retry_after == 30.0 and results[0].requested
        two = [Message(1, subs[1]["endpoint"], subs[1]["keys"]["p256dh"],
                       subs[1]["keys"]["auth"], b"{}", 60, "normal", None)]
        push.send_many(two, results.update, flush_every=1)
        # paused: nothing sent, the attempt given back, the throttle's own status kept
        assert (results[1].outcome, results[1].status_code, results[1].requested) == (
            Outcome.RETRY, 406, False)
        assert service.request_count(subs[1]) == 0
        now[0] += 31
        push.send_many(two, results.update, flush_every=1)
        assert results[1].outcome == Outcome.SENT
    finally:
        push.close()


def test_one_header_is_signed_per_origin_for_all_messages_and_batches(
        posing: Callable[[str | None], LocalPushService]) -> None:
    service = posing("apple")
    push = in_process_sender(service, {service.origin: "apple"})
    try:
        for _batch in range(3):
            send(push, service, 60, count=4)
        headers = {p.headers["authorization"] for p in service.received}
        assert len(service.received) == 12 and len(headers) == 1
        exp = claims_of(headers.pop())["exp"]
        assert time.time() < exp <= time.time() + DAY
    finally:
        push.close()


# -- configuration ---------------------------------------------------------------------------------


def settings(**changes: Any) -> dict[str, Any]:
    from flask_webpush_targeted.config import DEFAULTS

    return {**DEFAULTS, "WEBPUSH_PAYLOAD_FORMAT": "legacy",
            "WEBPUSH_EXTRA_PUSH_SERVICES": ["http://127.0.0.1:8765"], **changes}


def test_the_kinds_default_to_none_and_accept_a_listed_origin_in_any_spelling() -> None:
    from flask_webpush_targeted.config import DEFAULTS, extra_push_service_kinds

    assert DEFAULTS["WEBPUSH_EXTRA_PUSH_SERVICE_KINDS"] == {}
    validate_settings(settings())
    config = settings(WEBPUSH_EXTRA_PUSH_SERVICE_KINDS={"HTTP://127.0.0.1:8765/": "wns"})
    validate_settings(config)
    assert extra_push_service_kinds(config) == {"http://127.0.0.1:8765": "wns"}


@pytest.mark.parametrize(("kinds", "words"), [
    (["http://127.0.0.1:8765"], "must be a dict"),
    ("wns", "must be a dict"),
    ({"http://127.0.0.1:9999": "wns"}, "not an origin listed in WEBPUSH_EXTRA_PUSH_SERVICES"),
    ({"https://fcm.googleapis.com": "fcm"}, "not an origin listed"),
    ({"not a url": "wns"}, "not an origin listed"),
    ({"http://127.0.0.1:8765": "edge"}, "one of 'fcm', 'mozilla', 'apple', 'wns'"),
    ({"http://127.0.0.1:8765": None}, "the kind None"),
])
def test_wrong_kinds_are_refused_with_what_to_write(kinds: Any, words: str) -> None:
    with pytest.raises(ConfigurationError, match="WEBPUSH_EXTRA_PUSH_SERVICE_KINDS") as caught:
        validate_settings(settings(WEBPUSH_EXTRA_PUSH_SERVICE_KINDS=kinds))
    assert words in str(caught.value)


# -- end to end: real workers, the local push service posing as each service ---------------------


@pytest.fixture
def posing_host(db_url: str, redis_conn: Any, posing: Callable[[str | None], LocalPushService],
                ) -> Iterator[Callable[..., SendingHost]]:
    """SendingHost on each database with its own local push service posing as ``pose``;
    ``kind`` (default: the pose) goes to WEBPUSH_EXTRA_PUSH_SERVICE_KINDS."""
    made: list[SendingHost] = []

    def make(pose: str, kind: str | None = "pose", **config: Any) -> SendingHost:
        service = posing(pose)
        kinds = {} if kind is None else {service.origin: pose if kind == "pose" else kind}
        made.append(SendingHost(db_url, service, WEBPUSH_EXTRA_PUSH_SERVICE_KINDS=kinds,
                                **config))
        return made[-1]

    yield make
    for host in made:
        host.close()


def notify(host: SendingHost, users: list[str], **kw: Any) -> int:
    kw.setdefault("title", "Gate change: LO123 now boards at 14")
    with host.app.app_context():
        return int(host.webpush.notify_users(users, **kw).id)


def stored_for_longer(host: SendingHost, nid: int, ttl: int) -> None:
    """A notification kept for longer than notify_users lets one be (28 days): e.g. one
    stored before a service's cap was known, or by a host writing the row itself."""
    N = host.webpush.models.Notification
    with host.app.app_context():
        host.db.session.execute(sa.update(N).where(N.id == nid).values(ttl=ttl))
        host.db.session.commit()


def tag_of(nid: int) -> str:
    from flask_webpush_targeted.payload import default_tag

    return default_tag(nid)


def stats(host: SendingHost, nid: int) -> dict[str, Any]:
    with host.app.app_context():
        return dict(host.webpush.stats(nid))


FUNNEL = ("deliveries", "pending", "sent", "failed", "gone", "expired", "displayed")


@pytest.mark.parametrize("pose", ["fcm", "mozilla", "apple"])
def test_a_worker_sends_a_ttl_beyond_the_service_s_cap_as_the_cap_and_stats_stay(
        posing_host: Callable[..., SendingHost], pose: str) -> None:
    host = posing_host(pose)
    subs = [host.subscribe(str(u)) for u in (1, 2)]
    long_one = notify(host, ["1", "2"], ttl=3600)
    stored_for_longer(host, long_one, 40 * DAY)
    short_one = notify(host, ["1"], ttl=3600)
    host.run_worker()
    service = host.push_service
    by_sub = {s.endpoint: s for s in subs}
    received = [p for p in service.received if p.endpoint in by_sub]
    short_sub = host.deliveries(short_one)[0].subscription_id
    short_endpoint = next(s.endpoint for s in subs if s.id == short_sub)
    long_ttls = [p.ttl for p in received if p.notification().get("tag") != tag_of(short_one)]
    [short_push] = [p for p in received if p.notification().get("tag") == tag_of(short_one)]
    assert long_ttls == [CAPS[pose]] * 2, long_ttls
    assert short_push.endpoint == short_endpoint and 3590 <= short_push.ttl <= 3600
    assert all(p.ok for p in received)
    # What is stored and counted is the notification's own validity, not the header's.
    assert host.notification(long_one).ttl == 40 * DAY
    long_stats = stats(host, long_one)
    assert {k: long_stats[k] for k in FUNNEL} == {
        "deliveries": 2, "pending": 0, "sent": 2, "failed": 0, "gone": 0, "expired": 0,
        "displayed": 0}
    assert [d.status for d in host.deliveries(long_one)] == ["sent", "sent"]
    assert stats(host, short_one)["sent"] == 1


def test_without_a_kind_the_posing_service_refuses_the_uncapped_ttl(
        posing_host: Callable[..., SendingHost]) -> None:
    host = posing_host("fcm", kind=None)
    host.subscribe("1")
    nid = notify(host, ["1"], ttl=3600)
    stored_for_longer(host, nid, 40 * DAY)
    host.run_worker()
    [d] = host.deliveries(nid)
    assert (d.status, d.status_code) == ("failed", 400), (d.status, d.reason)
    assert "exceeds" in (d.reason or "")
    assert stats(host, nid)["failed"] == 1


def run_until_quiet(host: SendingHost, rounds: int) -> None:
    """A burst worker per round, each once the last one's retry (1 s here) is due: RQ's
    scheduler counts in whole seconds."""
    for index in range(rounds):
        if index:
            time.sleep(1.6)
        host.run_worker()


def test_wns_406_is_retried_with_backoff_until_accepted(
        posing_host: Callable[..., SendingHost]) -> None:
    host = posing_host("wns", WEBPUSH_RETRY_MAX_DELAY=1.0, WEBPUSH_MAX_ATTEMPTS=5)
    sub = host.subscribe("1")
    host.push_service.throttle(sub.endpoint, times=2)
    nid = notify(host, ["1"])
    host.run_worker()
    [d] = host.deliveries(nid)
    # as a 429 without Retry-After: retried after the default wait (capped at 1 s here)
    assert (d.status, d.status_code, d.attempts) == ("pending", 406, 1), d.reason
    assert 0.9 <= (d.next_attempt_at - d.claimed_at).total_seconds() <= 1.5
    run_until_quiet(host, 3)
    [d] = host.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("sent", 201, 3)
    assert host.push_service.request_count(sub.endpoint) == 3
    assert len(host.push_service.received_for(sub.endpoint)) == 1
    s = stats(host, nid)
    assert (s["sent"], s["failed"], s["pending"], s["deliveries"]) == (1, 0, 0, 1)
    assert host.notification(nid).status == "done"


def test_a_406_from_a_service_not_known_as_wns_stays_final(
        posing_host: Callable[..., SendingHost]) -> None:
    host = posing_host("wns", kind=None, WEBPUSH_RETRY_MAX_DELAY=1.0)
    sub = host.subscribe("1")
    host.push_service.throttle(sub.endpoint, times=2)
    nid = notify(host, ["1"])
    host.run_worker()
    [d] = host.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("failed", 406, 1)
    assert host.push_service.request_count(sub.endpoint) == 1
    assert stats(host, nid)["failed"] == 1


def test_wns_throttling_past_the_attempts_ends_failed_after_max_attempts(
        posing_host: Callable[..., SendingHost]) -> None:
    host = posing_host("wns", WEBPUSH_RETRY_MAX_DELAY=1.0, WEBPUSH_MAX_ATTEMPTS=2)
    sub = host.subscribe("1")
    host.push_service.throttle(sub.endpoint)
    nid = notify(host, ["1"])
    run_until_quiet(host, 2)
    [d] = host.deliveries(nid)
    assert (d.status, d.status_code, d.attempts) == ("failed", 406, 2)
    assert (d.reason or "").startswith("gave up after 2 attempts")
    assert stats(host, nid)["failed"] == 1


@pytest.mark.parametrize("mode", [(), ("--fork",)], ids=["default", "fork"])
def test_apple_gets_one_jwt_expiring_within_a_day_for_every_batch_of_a_worker(
        posing_host: Callable[..., SendingHost], mode: tuple[str, ...]) -> None:
    host = posing_host("apple", WEBPUSH_BATCH_SIZE=2)
    users = [str(u) for u in range(1, 6)]
    for user in users:
        host.subscribe(user)
    first = notify(host, users)
    second = notify(host, users[:2])
    host.run_worker(*mode)  # --fork: a work horse per batch
    received = host.push_service.received
    assert len(received) == 7 and all(p.ok for p in received)
    batches = {(d.notification_id, d.claimed_by) for nid in (first, second)
               for d in host.deliveries(nid)}
    assert len(batches) >= 4  # 5 deliveries in batches of 2, and another notification
    headers = {p.headers["authorization"] for p in received}
    assert len(headers) == 1, "signed again for another batch"
    exp = claims_of(headers.pop())["exp"]
    for push in received:
        assert push.received_at < exp <= push.received_at + DAY
    assert stats(host, first)["sent"] == 5 and stats(host, second)["sent"] == 2
