from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from django_eventsource.views import HealthView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("eventsource/", include("django_eventsource.urls")),
    # The thresholds as view arguments (they override the settings).
    path("strict-health/", HealthView.as_view(max_lag=0, max_held_seconds=0)),
]
