from __future__ import annotations

from django.urls import path

from tasks import views

app_name = "tasks"

urlpatterns = [
    path("", views.index, name="index"),
    path("t/<slug:tenant>/", views.tenant_tasks, name="tenant"),
    path("t/<slug:tenant>/tasks/", views.create_task, name="create"),
    path(
        "t/<slug:tenant>/tasks/<uuid:task_id>/<slug:action>/",
        views.task_action,
        name="action",
    ),
]
