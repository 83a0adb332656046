"""Catches a projection up in small batches: ``python -m tests.concurrency.catchup_worker``.

Arguments: projection name, batch size, and optionally a tenant. Prints ``started`` once
Django is set up, then ``done <position>`` when caught up. The crash tests SIGKILL it.
"""

from __future__ import annotations

import sys


def main(name: str, batch_size: str, tenant: str | None = None) -> None:
    import django

    django.setup()
    from django_eventsource import catch_up
    from django_eventsource.projections import projection_registry

    projection = projection_registry.get(name)()
    print("started", flush=True)
    # wait_for_lock: the killed predecessor's lock may take a moment to go.
    result = catch_up(projection, batch_size=int(batch_size), tenant_id=tenant, wait_for_lock=True)
    print(f"done {result.position}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
