"""Running projections over the store: batches, checkpoints, resumption.

One batch is the unit of crash safety: [`apply_batch`][django_eventsource.apply_batch]
applies a page of events to a projection and saves its checkpoint in one transaction, so a
crash leaves the whole batch committed or none of it, and the next run resumes from the
checkpoint. [`ProjectionRunner`][django_eventsource.runner.ProjectionRunner] runs the one
batch loop that workers, rebuilds, the admin, [`catch_up`][django_eventsource.catch_up],
`testing.run_projections` and the benchmarks all share.

The modules, one concept each (this package re-exports their public names):

| module | what it holds |
| --- | --- |
| `runner.batch` | `apply_batch`: one batch; `CatchUpResult`, `RunResult`: what a run did; connection recycling between batches |
| `runner.policy` | the error policy: retry a failing event, then pause, dead-letter or raise |
| `runner.held` | events the ordering horizon holds back: `settle` after a read, `HeldWatch` while idle |
| `runner.progress` | `Reporter`: progress reports as log records (logger `django_eventsource.runner`) and metrics |
| `runner.loop` | `ProjectionRunner`: the batch loop, locks, status, heartbeats, follow; `LockLost` |
| `runner.catchup` | `catch_up`: the loop for one projection, raising instead of pausing |
| `runner.signals` | `StopSignals`: SIGINT and SIGTERM stop a whole program (a command) cleanly, from its start to its exit |
"""

from __future__ import annotations

# The names below ``__all__``'s (the settle and recycle constants, ``ProgressCallback``,
# ``Reporter``) stay importable from here, as when the runner was one module.
from django_eventsource.runner.batch import RECYCLE_INTERVAL as RECYCLE_INTERVAL
from django_eventsource.runner.batch import CatchUpResult, RunResult, apply_batch
from django_eventsource.runner.catchup import catch_up
from django_eventsource.runner.held import SETTLE_FIRST_PAUSE as SETTLE_FIRST_PAUSE
from django_eventsource.runner.held import SETTLE_SECONDS as SETTLE_SECONDS
from django_eventsource.runner.loop import LockLost, ProjectionRunner
from django_eventsource.runner.progress import ProgressCallback as ProgressCallback
from django_eventsource.runner.progress import Reporter as Reporter
from django_eventsource.runner.signals import StopSignals

__all__ = [
    "CatchUpResult",
    "LockLost",
    "ProjectionRunner",
    "RunResult",
    "StopSignals",
    "apply_batch",
    "catch_up",
]
