"""The bench's own app for ``bench/catchup.py``: one read model, one event, one projection.

It has no migrations: the bench creates its table with ``migrate --run-syncdb``.
"""
