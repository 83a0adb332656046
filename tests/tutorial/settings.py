"""Settings for running the tutorial as its reader would: django_eventsource, no test app.

The test app registers its own ``TaskCreated``; the tutorial registers one too.
"""

from __future__ import annotations

from tests.settings import *
from tests.settings import INSTALLED_APPS as _APPS

INSTALLED_APPS = [app for app in _APPS if app != "tests.testapp"]
