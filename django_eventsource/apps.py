"""The Django app configuration."""

from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

from django_eventsource.backends.postgresql import ensure_append_function
from django_eventsource.built import mark_inline_built_on_empty_store
from django_eventsource.conf import get_settings
from django_eventsource.projections import InlineProjections
from django_eventsource.store import set_inline_projections


class EventSourceConfig(AppConfig):
    """Wires the app up in `ready`: system checks, the inline projections' append hook,
    the ``post_migrate`` guards (the append function, built inline projections), and projection autodiscovery."""

    name = "django_eventsource"
    label = "django_eventsource"
    verbose_name = "Event sourcing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks (Django's convention: in ready(), as an import).
        from django_eventsource import checks  # noqa: F401

        # The store never imports projections: it applies inline ones through this hook.
        set_inline_projections(InlineProjections())
        # Tables made without the migrations (--run-syncdb) still get the append function.
        post_migrate.connect(ensure_append_function, sender=self)
        # A new store: its inline projections will see every event (the `unbuilt` status).
        post_migrate.connect(mark_inline_built_on_empty_store, sender=self)

        options = get_settings()
        if options.autodiscover_module:
            # Importing each app's projections module registers its projections (and events).
            autodiscover_modules(options.autodiscover_module)
        for dotted_path in options.projections:
            import_module(dotted_path)
