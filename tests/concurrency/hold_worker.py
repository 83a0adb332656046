"""Appends one event inside a transaction and holds it open until told to finish.

``python -m tests.concurrency.hold_worker <aggregate id>``: prints ``holding <position>
<backend pid>``,
then reads one line from stdin: ``commit`` or ``rollback``; prints ``done``.
"""

from __future__ import annotations

import sys
from uuid import UUID


class Rollback(Exception):
    pass


def main(aggregate_id: str) -> None:
    import django

    django.setup()
    from django.db import connection, transaction

    from django_eventsource import EventStore
    from tests.testapp.events import Counted

    store = EventStore()
    stream = UUID(aggregate_id)
    try:
        with transaction.atomic():
            [stored] = store.append(stream, [Counted(aggregate_id=stream, writer=99)])
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT 0"
                )
                backend = cursor.fetchone()[0]
            print(f"holding {stored.position} {backend}", flush=True)
            if sys.stdin.readline().strip() != "commit":
                raise Rollback
    except Rollback:
        pass
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
