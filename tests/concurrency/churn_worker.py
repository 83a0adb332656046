"""Churn: short write transactions in ANOTHER database of the same server, as fast as it can,
until killed: ``python -m tests.concurrency.churn_worker``.

Each transaction takes a transaction id and commits at once. None of them touches the event
table, so none may hold readers back; but one that ends while a reader computes its horizon
used to hold that read back (the horizon's "ended since the snapshot" term).
"""

from __future__ import annotations

import os
import sys

import psycopg


def main() -> None:
    url = os.environ["CHURN_URL"]
    with psycopg.connect(url, autocommit=True) as connection:
        print("started", flush=True)
        while True:
            with connection.transaction():
                connection.execute("SELECT pg_current_xact_id()")


if __name__ == "__main__":
    main()
    sys.exit(0)
