"""The Django app configuration."""

from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig


class EventSourceConfig(AppConfig):
    """Wires the app up in :meth:`ready`: system checks and projection autodiscovery."""

    name = "django_eventsource"
    label = "django_eventsource"
    verbose_name = "Event sourcing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate
        from django.utils.module_loading import autodiscover_modules

        from django_eventsource import checks  # noqa: F401  (registers the system checks)
        from django_eventsource.backends.postgresql import ensure_append_function
        from django_eventsource.conf import get_settings

        # Tables made without the migrations (--run-syncdb) still get the append function.
        post_migrate.connect(ensure_append_function, sender=self)

        options = get_settings()
        if options.autodiscover_module:
            # Importing each app's projections module registers its projections (and events).
            autodiscover_modules(options.autodiscover_module)
        for dotted_path in options.projections:
            import_module(dotted_path)
