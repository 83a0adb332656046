"""``path("eventsource/", include("django_eventsource.urls"))``: ``health/`` and
``metrics/`` (see [`django_eventsource.views`][django_eventsource.views])."""

from __future__ import annotations

from django.urls import path

from django_eventsource import views

app_name = "django_eventsource"

urlpatterns = [
    path("health/", views.health, name="health"),
    path("metrics/", views.metrics, name="metrics"),
]
