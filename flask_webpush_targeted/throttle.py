"""``rate_per_minute``: a notification's shared sending budget, kept in Redis.

Every delivery of a throttled notification is sent at a *slot* it took from the budget
first: slots are ``60 / rate`` seconds apart, handed out in order to whichever worker
asks, so no more than ``rate`` slots start in any minute, however many workers, retries
or recovered batches send at once. A batch takes the slots of the next
``THROTTLE_HORIZON`` seconds at most, sends each message at its slot, and leaves the rest
pending for a job at the next free slot: a worker never holds rows it cannot send soon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from .clock import utcnow

#: how far ahead a batch takes slots (and so how long it may spend sending them)
THROTTLE_HORIZON = 10.0
#: how long before its next free slot a throttled batch's next job is due: the seconds a
#: job takes to start (RQ's scheduler polls once a second; the default worker forks)
THROTTLE_LEAD = 2.0
#: sends sharing a tick go to the network together (a sleep per message would be
#: thousands of wake-ups a second at high rates)
TICK = 0.25

# KEYS[1]: the budget; ARGV: now, interval, wanted, horizon, expiry. The next free slot
# ("theoretical arrival time") is read, advanced and stored in one step.
_RESERVE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local first = tat
local room = math.floor((now + tonumber(ARGV[4]) - tat) / interval) + 1
local n = math.min(tonumber(ARGV[3]), math.max(room, 0))
tat = tat + n * interval
if n > 0 then redis.call('SET', KEYS[1], string.format('%.6f', tat), 'EX', ARGV[5]) end
return {string.format('%.6f', first), n, string.format('%.6f', tat)}
"""


@dataclass(frozen=True)
class Slots:
    """Slots taken from a budget: ``count`` of them from ``first``, ``interval`` apart."""

    first: float  # POSIX time of the first slot
    count: int
    interval: float
    next_free: float  # POSIX time of the first slot nobody holds yet

    def at(self, index: int) -> float:
        """The POSIX time of slot ``index``."""
        return self.first + index * self.interval


def budget_key(queue_name: str, notification_id: int) -> str:
    """The Redis key of a notification's budget."""
    return f"webpush:{queue_name}:rate:{notification_id}"


def claim_size(rate_per_minute: int, batch_size: int) -> int:
    """How many deliveries a throttled batch claims: a horizon's worth of slots."""
    return max(1, min(batch_size, math.ceil(rate_per_minute * THROTTLE_HORIZON / 60)))


def reserve(connection: redis.Redis, key: str, rate_per_minute: int, wanted: int) -> Slots:
    """Take up to ``wanted`` slots among those starting within THROTTLE_HORIZON seconds."""
    interval = 60.0 / rate_per_minute
    now = utcnow().timestamp()
    expiry = int(THROTTLE_HORIZON + 3600)
    first, count, next_free = connection.eval(
        _RESERVE, 1, key, f"{now:.6f}", repr(interval), wanted, THROTTLE_HORIZON, expiry)
    return Slots(float(first), int(count), interval, float(next_free))


def ticks(slots: Slots) -> list[tuple[float, range]]:
    """The slots grouped into ticks: (the time the tick's last slot starts, slot indexes).
    A tick is sent at its last slot, so no message goes out before its own slot."""
    groups: list[tuple[float, range]] = []
    start = 0
    while start < slots.count:
        end = start + 1
        while end < slots.count and slots.at(end) - slots.at(start) < TICK:
            end += 1
        groups.append((slots.at(end - 1), range(start, end)))
        start = end
    return groups
