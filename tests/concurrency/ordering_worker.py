"""A writer process for the global-order tests: ``python -m tests.concurrency.ordering_worker``.

Arguments: writer id, number of appends, random seed, and the shared stream ids. Each append
runs in its own transaction and, at random: first writes something else (so the transaction
takes its id early), sleeps before appending, appends 1-4 events to its own stream or to a
shared one, sleeps before committing, or rolls back. Prints a JSON summary on exit.

With ``ORDERING_SLOW_RELEASE=N`` in the environment (PostgreSQL), each transaction also
takes N advisory locks after its append: releasing them at commit takes a while, and
PostgreSQL releases the table lock of the append before the transaction-id lock, so a
reader that looks at ``pg_locks`` meanwhile sees a committing writer without its table lock.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from uuid import UUID, uuid4


class Rollback(Exception):
    pass


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from django.db import connection, transaction

    from django_eventsource import ConcurrencyError, EventStore, ExpectedVersion
    from tests.testapp.events import Counted
    from tests.testapp.models import Note

    writer, appends, seed = int(argv[0]), int(argv[1]), int(argv[2])
    shared = [UUID(s) for s in argv[3:]]
    slow_release = int(os.environ.get("ORDERING_SLOW_RELEASE", "0"))
    rng = random.Random(seed)
    store = EventStore()
    own = uuid4()
    stats = {"committed": 0, "rolled_back": 0, "early_xid": 0, "conflicts": 0, "shared": 0}
    for seq in range(appends):
        stream = rng.choice(shared) if shared and rng.random() < 0.5 else own
        count = rng.randint(1, 4)
        exact = rng.random() < 0.5
        try:
            with transaction.atomic():
                if rng.random() < 0.5:
                    Note.objects.create(text=f"{writer}-{seq}")
                    stats["early_xid"] += 1
                    time.sleep(rng.uniform(0, 0.02))
                events = [
                    Counted(aggregate_id=stream, writer=writer, seq=seq) for _ in range(count)
                ]
                expected = store.stream_version(stream) if exact else ExpectedVersion.ANY
                store.append(stream, events, expected_version=expected)
                if slow_release:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT count(pg_advisory_xact_lock(%s, k)) "
                            "FROM generate_series(1, %s) AS k",
                            [1000 + writer, slow_release],
                        )
                time.sleep(rng.uniform(0, 0.02))
                if rng.random() < 0.1:
                    raise Rollback
        except Rollback:
            stats["rolled_back"] += 1
            continue
        except ConcurrencyError:
            stats["conflicts"] += 1
            continue
        stats["committed"] += 1
        stats["shared"] += stream != own
    print(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv[1:])
