"""What one flush of push-service answers means, decided without a database, an app or Redis:
``delivery.decide`` and the ``Plan`` it returns (the write and the signals follow it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from flask_webpush_targeted.counters import bucket
from flask_webpush_targeted.delivery import Count, Plan, Written, decide, retry_delay
from flask_webpush_targeted.statuses import DeliveryStatus
from flask_webpush_targeted.transport.sender import PushResult

NID = 7
CLAIM = "c1aim"
START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
#: a time with a fraction of a second: retry jobs go to whole seconds, rounded up
NOW = START + timedelta(minutes=3, microseconds=250_000)
BASE, MAXIMUM, MAX_ATTEMPTS = 10.0, 3600.0, 5
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


class Row(NamedTuple):
    """A claimed row as the batch's claim query reads it."""

    attempts: int = 1
    subscription_id: int | None = 100
    user_agent: str | None = CHROME
    consecutive_failures: int | None = 0
    due_at: datetime | None = None


def plan_of(results: dict[int, PushResult], rows: dict[int, Row] | None = None, *,
            deadline: datetime = NOW + timedelta(days=1), **settings: Any) -> Plan:
    rows = rows if rows is not None else {}
    every = {d: rows.get(d, Row(subscription_id=100 + d)) for d in results}
    limits: dict[str, Any] = {"max_attempts": MAX_ATTEMPTS, "retry_base_delay": BASE,
                              "retry_max_delay": MAXIMUM, **settings}
    return decide(NID, every, results, now=NOW, start=START, deadline=deadline, claim=CLAIM,
                  **limits)


def test_a_sent_delivery_is_sent_now_counted_on_its_platform_and_told() -> None:
    plan = plan_of({1: PushResult("sent", 201)})
    assert plan.rows[1] == Written(DeliveryStatus.SENT, 201, None, None, NOW, CLAIM, False)
    assert plan.counts[1] == Count(DeliveryStatus.SENT, at=bucket(START, NOW),
                                   platform="Chrome desktop")
    [signal] = plan.signals
    assert (signal.kind, signal.delivery_id) == ("sent", 1)
    assert dict(signal.kwargs) == {"delivery_id": 1, "notification_id": NID,
                                   "subscription_id": 101}
    assert plan.retries == {} and plan.refused == ()
    assert plan.tally() == {"sent": 1}


def test_a_gone_subscription_is_revoked_and_told_as_a_failure_that_is_gone() -> None:
    plan = plan_of({1: PushResult("gone", 410, "410 Gone")})
    assert plan.rows[1].status == DeliveryStatus.GONE and plan.rows[1].claimed_by == CLAIM
    assert plan.gone == (101,) and plan.failing == () and plan.recovered == ()
    assert plan.counts[1] == Count(DeliveryStatus.GONE, reason=(410, "410 Gone"))
    [signal] = plan.signals
    assert signal.kind == "failed"
    assert dict(signal.kwargs) == {"delivery_id": 1, "notification_id": NID,
                                   "subscription_id": 101, "error": "410 Gone",
                                   "status_code": 410, "gone": True}


def test_a_failed_delivery_keeps_its_subscription_counts_a_failure_and_is_told() -> None:
    plan = plan_of({1: PushResult("failed", 413, "413 Payload Too Large")})
    assert plan.rows[1] == Written(DeliveryStatus.FAILED, 413, "413 Payload Too Large", None,
                                   None, CLAIM, False)
    assert plan.gone == () and plan.failing == (101,)
    assert plan.counts[1] == Count(DeliveryStatus.FAILED, reason=(413, "413 Payload Too Large"))
    [signal] = plan.signals
    assert signal.kind == "failed" and signal.kwargs["gone"] is False
    assert plan.refused == ()  # not a VAPID problem


def test_400_401_403_are_reported_as_vapid_problems() -> None:
    plan = plan_of({1: PushResult("failed", 400, "bad"), 2: PushResult("failed", 401, "who"),
                    3: PushResult("failed", 403, "no"), 4: PushResult("failed", 404, "x"),
                    5: PushResult("failed", None, "error: boom")})
    assert plan.refused == ((1, "bad"), (2, "who"), (3, "no"))
    assert plan.gone == ()  # a VAPID misconfiguration never revokes a subscriber


def test_a_retry_backs_off_exponentially_from_the_attempts_made() -> None:
    plan = plan_of({1: PushResult("retry", 503, "503"), 2: PushResult("retry", 503, "503")},
                   {1: Row(attempts=1), 2: Row(attempts=3)})
    first, third = plan.rows[1], plan.rows[2]
    assert first.status == third.status == DeliveryStatus.PENDING
    assert first.next_attempt_at == NOW + timedelta(seconds=BASE)
    assert third.next_attempt_at == NOW + timedelta(seconds=BASE * 4)
    # Released for the retry's batch to claim, the attempt kept, nothing final yet.
    assert first.claimed_by is None and first.give_back is False and first.sent_at is None
    assert plan.counts == {} and plan.signals == ()
    assert plan.tally() == {"pending": 2}


def test_backoff_stops_at_the_longest_retry_delay() -> None:
    assert retry_delay(20, None, BASE, MAXIMUM) == MAXIMUM
    plan = plan_of({1: PushResult("retry", 500)}, {1: Row(attempts=4)},
                   retry_max_delay=60.0)
    assert plan.rows[1].next_attempt_at == NOW + timedelta(seconds=60)


def test_a_retry_after_hint_wins_over_the_backoff_within_the_longest_delay() -> None:
    plan = plan_of({1: PushResult("retry", 429, "slow down", retry_after=2.0),
                    2: PushResult("retry", 429, "slow down", retry_after=99_999.0)},
                   {1: Row(attempts=3), 2: Row(attempts=1)})
    assert plan.rows[1].next_attempt_at == NOW + timedelta(seconds=2)
    assert plan.rows[2].next_attempt_at == NOW + timedelta(seconds=MAXIMUM)


def test_a_retry_at_the_last_attempt_gives_up_as_failed_and_is_told() -> None:
    plan = plan_of({1: PushResult("retry", 503, "503 Service Unavailable"),
                    2: PushResult("retry", 503, "503 Service Unavailable")},
                   {1: Row(attempts=MAX_ATTEMPTS, subscription_id=101),
                    2: Row(attempts=MAX_ATTEMPTS - 1, subscription_id=102)})
    gave_up = plan.rows[1]
    assert gave_up.status == DeliveryStatus.FAILED and gave_up.next_attempt_at is None
    assert gave_up.reason == f"gave up after {MAX_ATTEMPTS} attempts: 503 Service Unavailable"
    assert gave_up.claimed_by == CLAIM
    assert plan.counts[1] == Count(DeliveryStatus.FAILED, reason=(503, gave_up.reason))
    # The one before the last attempt is retried, untold.
    assert plan.rows[2].status == DeliveryStatus.PENDING and 2 not in plan.counts
    [signal] = plan.signals
    assert (signal.kind, signal.delivery_id) == ("failed", 1)
    assert signal.kwargs["error"] == "503 Service Unavailable"
    assert signal.kwargs["status_code"] == 503 and signal.kwargs["gone"] is False
    assert list(plan.retries.values()) == [(2, 2)]
    assert plan.failing == (101, 102)  # both failed once more


def test_a_retry_due_after_the_validity_ends_is_expired_at_once() -> None:
    deadline = NOW + timedelta(seconds=30)
    plan = plan_of({1: PushResult("retry", 500, "500"), 2: PushResult("retry", 500, "500")},
                   {1: Row(attempts=3), 2: Row(attempts=1)}, deadline=deadline)
    # 40 s of backoff ends past the deadline; 10 s does not.
    assert plan.rows[1] == Written(DeliveryStatus.EXPIRED, 500,
                                   "validity period (ttl) ends before the retry: 500",
                                   None, None, CLAIM, False)
    assert plan.counts[1] == Count(DeliveryStatus.EXPIRED, reason=(500, plan.rows[1].reason))
    assert plan.rows[2].status == DeliveryStatus.PENDING
    assert list(plan.retries.values()) == [(2, 2)]  # no job for the expired one
    assert plan.signals == ()


def test_a_retry_due_exactly_at_the_deadline_is_expired() -> None:
    plan = plan_of({1: PushResult("retry", 500)}, deadline=NOW + timedelta(seconds=BASE))
    assert plan.rows[1].status == DeliveryStatus.EXPIRED and plan.retries == {}


def test_a_paused_origin_gives_the_attempt_back() -> None:
    paused = PushResult("retry", 429, "origin paused", retry_after=5.0, requested=False)
    plan = plan_of({1: paused}, {1: Row(attempts=2)})
    assert plan.rows[1].give_back is True
    assert plan.rows[1].status == DeliveryStatus.PENDING
    assert plan.rows[1].next_attempt_at == NOW + timedelta(seconds=5)


def test_a_paused_origin_at_the_last_attempt_neither_gives_up_nor_tells() -> None:
    # The claim counted an attempt that never reached the service: it is given back, so
    # the delivery is still one attempt short of the limit.
    paused = PushResult("retry", 429, "origin paused", requested=False)
    plan = plan_of({1: paused}, {1: Row(attempts=MAX_ATTEMPTS)})
    assert plan.rows[1].status == DeliveryStatus.PENDING and plan.rows[1].give_back
    # backed off from the attempts really made
    assert plan.rows[1].next_attempt_at == NOW + timedelta(
        seconds=BASE * 2 ** (MAX_ATTEMPTS - 2))
    assert plan.signals == () and plan.counts == {}
    # one attempt later, really sent and refused again, it gives up
    sent = PushResult("retry", 503, "503")
    assert plan_of({1: sent}, {1: Row(attempts=MAX_ATTEMPTS)}).rows[1].status == "failed"


def test_distinct_due_times_get_a_retry_job_each_to_the_whole_second_rounded_up() -> None:
    # Answers come in any order: a job covers its due time's lowest to highest id.
    plan = plan_of({9: PushResult("retry", 429, retry_after=1.5),
                    5: PushResult("retry", 503),
                    3: PushResult("retry", 429, retry_after=1.0),
                    4: PushResult("retry", 429, retry_after=1.0)},
                   {5: Row(attempts=1)})
    up = NOW.replace(microsecond=0) + timedelta(seconds=1)  # NOW has 0.25 s
    assert plan.retries == {up + timedelta(seconds=1): (3, 9),  # 1.25 s and 1.75 s: one second
                            up + timedelta(seconds=BASE): (5, 5)}
    # The rows keep their exact due time; only the job is rounded, so it never runs early.
    assert plan.rows[3].next_attempt_at == NOW + timedelta(seconds=1)
    for due in plan.retries:
        assert due.microsecond == 0


def test_a_due_time_on_a_whole_second_is_not_rounded() -> None:
    plan = plan_of({1: PushResult("retry", 429, retry_after=0.75)})
    assert list(plan.retries) == [NOW + timedelta(seconds=0.75)]


def test_reasons_are_cut_to_the_column_size_after_any_prefix() -> None:
    long = "x" * 300
    plan = plan_of({1: PushResult("failed", 500, long), 2: PushResult("retry", 500, long)},
                   {2: Row(attempts=MAX_ATTEMPTS)})
    assert plan.rows[1].reason == long[:255]
    assert plan.rows[2].reason == f"gave up after {MAX_ATTEMPTS} attempts: {long}"[:255]
    assert plan.counts[2].reason == (500, plan.rows[2].reason)
    # the receivers get the push service's own words
    assert [s.kwargs["error"] for s in plan.signals] == [long, long]


def test_subscription_health_follows_each_answer() -> None:
    plan = plan_of({1: PushResult("sent", 201), 2: PushResult("sent", 201),
                    3: PushResult("gone", 404), 4: PushResult("failed", 413),
                    5: PushResult("retry", 503), 6: PushResult("skipped", reason="revoked"),
                    7: PushResult("expired", reason="ttl")},
                   {1: Row(subscription_id=11, consecutive_failures=2),
                    2: Row(subscription_id=12, consecutive_failures=0),
                    3: Row(subscription_id=13), 4: Row(subscription_id=14),
                    5: Row(subscription_id=15), 6: Row(subscription_id=None),
                    7: Row(subscription_id=17)})
    assert plan.gone == (13,)
    assert plan.recovered == (11,)  # only one that had failures: no write per sent row
    assert plan.failing == (14, 15)


def test_skipped_and_expired_answers_are_final_counted_and_untold() -> None:
    plan = plan_of({1: PushResult("skipped", reason="device revoked or consent withdrawn"),
                    2: PushResult("expired", reason="validity period (ttl) passed")},
                   {1: Row(subscription_id=None)})
    assert plan.rows[1].status == DeliveryStatus.SKIPPED and plan.rows[1].claimed_by == CLAIM
    assert plan.rows[2].status == DeliveryStatus.EXPIRED
    assert plan.counts[1] == Count(DeliveryStatus.SKIPPED,
                                   reason=(None, "device revoked or consent withdrawn"))
    assert plan.signals == () and plan.gone == plan.failing == plan.recovered == ()


def test_one_update_per_distinct_outcome() -> None:
    plan = plan_of({1: PushResult("sent", 201), 2: PushResult("sent", 201),
                    3: PushResult("sent", 202), 4: PushResult("failed", 413, "big"),
                    5: PushResult("failed", 413, "big")})
    assert sorted(plan.groups.values()) == [(1, 2), (3,), (4, 5)]
    for values, ids in plan.groups.items():
        assert all(plan.rows[i] == values for i in ids)
