"""A/B variants of a notification: who gets which, the winner, and whether a difference means
anything.

Every user is assigned a variant by a hash of the notification's id and their user id, so a
retry, a second device or a second batch gives them the same one, in proportion to the
variants' weights. With a ``test_share``, only that share of the users (again by a hash) is
in the test; the others wait ``winner_after`` and then all get the variant whose rate
(``winner_by``: clicks or direct conversions, per delivery sent) is the best, the first on a
tie. The rates are compared with a two-proportion z-test, whose p-value the admin page shows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: how many variants a notification may have
MIN_VARIANTS, MAX_VARIANTS = 2, 5
#: the largest weight of one variant (weights are relative: 50/50 is 1/1)
MAX_WEIGHT = 10_000
#: what the winner is chosen by: the rate of clicks or of direct conversions, per sent
WINNER_BY = ("clicks", "conversions")
#: the counter each choice reads
WINNER_COUNTER = {"clicks": "clicked", "conversions": "conversions"}
#: below this p-value a difference is called significant (the usual 5 %)
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Split:
    """A notification's variants as stored: weights, the test share and the winner rule."""

    weights: tuple[int, ...]
    test_share: float | None = None
    winner_after: int | None = None  # seconds after sending starts
    winner_by: str = "clicks"

    @classmethod
    def of(cls, stored: Mapping[str, Any]) -> Split:
        """The split of a notification's ``variants`` column."""
        return cls(tuple(int(v["weight"]) for v in stored["variants"]),
                   stored.get("test_share"), stored.get("winner_after"),
                   stored.get("winner_by") or "clicks")


def _unit(notification_id: int, user_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by the notification, the user and what it decides."""
    digest = hashlib.sha256(f"{purpose}:{notification_id}:{user_id}".encode(
        "utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_test(split: Split, notification_id: int, user_id: str) -> bool:
    """Whether the user is in the test (everyone without a test share)."""
    return split.test_share is None or _unit(notification_id, user_id, "share") < split.test_share


def assigned(split: Split, notification_id: int, user_id: str) -> int:
    """The variant a user in the test gets, in proportion to the weights."""
    point = _unit(notification_id, user_id, "variant") * sum(split.weights)
    for index, weight in enumerate(split.weights):
        point -= weight
        if point < 0:
            return index
    return len(split.weights) - 1


def rate(part: int, whole: int) -> float | None:
    """part / whole, or None without a whole."""
    return part / whole if whole else None


def best(figures: Sequence[Mapping[str, int]], winner_by: str) -> int:
    """The variant with the best rate among ``figures`` (one counter row each); the first
    on a tie, and the first when nothing was sent."""
    counter = WINNER_COUNTER[winner_by]
    rates = [rate(f.get(counter, 0), f.get("sent", 0)) or 0.0 for f in figures]
    return max(range(len(rates)), key=lambda i: (rates[i], -i))


def p_value(hits_a: int, sent_a: int, hits_b: int, sent_b: int) -> float | None:
    """The two-sided p-value of a two-proportion z-test (pooled), or None when it does not
    apply: nothing sent to one, no difference possible, or more hits than sent (orders:
    a customer may order twice after one push, and a proportion is at most 1)."""
    if not sent_a or not sent_b or not 0 <= hits_a <= sent_a or not 0 <= hits_b <= sent_b:
        return None
    pooled = (hits_a + hits_b) / (sent_a + sent_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / sent_a + 1 / sent_b))
    if spread == 0:
        return None
    z = (hits_a / sent_a - hits_b / sent_b) / spread
    return math.erfc(abs(z) / math.sqrt(2))
