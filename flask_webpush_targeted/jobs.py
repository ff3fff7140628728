"""The RQ jobs, at the dotted paths RQ stores with each job: ``flask_webpush_targeted.jobs.*``.

Module-level functions taking ids, each run in the app's context by the worker and safe
to run twice. These names stay when the code behind them moves (a job enqueued by one
release may run under the next); the modules that enqueue them use the names in
``redis_queue`` and never import this one.
"""

from __future__ import annotations

from .delivery import send_batch as send_batch
from .fanout import fan_out as fan_out

__all__ = ["fan_out", "send_batch"]
