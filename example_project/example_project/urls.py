"""URLs: the admin, the health probe and the Prometheus metrics of django-eventsource
(``/eventsource/health/``, ``/eventsource/metrics/``), and the task board of the ``tasks``
app at the root."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("eventsource/", include("django_eventsource.urls")),
    path("", include("tasks.urls")),
]
