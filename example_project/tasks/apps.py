from __future__ import annotations

from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks (read models)"
    default_auto_field = "django.db.models.BigAutoField"
