"""The dedicated connections of the PostgreSQL wing (the runner's advisory lock, the
follower's ``LISTEN``), built from Django's own connection parameters.

They are made exactly as Django makes its connection to the same alias
(``get_connection_params()``): ``sslmode`` and certificates, ``options``,
``target_session_attrs``, ``service``, ``connect_timeout`` and any other ``OPTIONS`` apply,
and ``assume_role`` is taken as Django takes it. A listener that connected in plaintext while
Django's connection required TLS would send the password in the clear.

psycopg is imported inside the functions: it is optional (the ``postgres`` extra).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

__all__ = ["connect", "connection_params"]


def connection_params(using: str, application_name: str) -> dict[str, Any]:
    """The keyword arguments of ``psycopg.connect()`` for a dedicated autocommit connection
    to ``using``: Django's own parameters, with our application name."""
    params: dict[str, Any] = connections[using].get_connection_params()
    params["application_name"] = application_name
    params["autocommit"] = True
    return params


def connect(using: str, application_name: str) -> Any:
    """A new psycopg connection to ``using``, made as Django makes its own."""
    import psycopg
    from psycopg import sql

    connection = psycopg.connect(**connection_params(using, application_name))
    role = connections[using].settings_dict["OPTIONS"].get("assume_role")
    if role:
        try:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        except psycopg.Error:
            connection.close()
            raise
    return connection
