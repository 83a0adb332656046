"""A real browser for the admin's end-to-end tests: Debian's headless Chromium.

Selenium is given the paths of ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (from
``bash scripts/install-browser``), so selenium-manager never downloads a browser. Without
them the tests fail with a message saying how to install them: a skipped browser test would
look like a pass in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import ROOT

CHROMIUM = os.environ.get("BROWSER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BROWSER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("BROWSER_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"The admin's browser tests need Chromium and chromedriver; missing: "
            f"{', '.join(missing)}. Install them with `bash scripts/install-browser` "
            "(apt-get install chromium chromium-driver), or point BROWSER_TEST_CHROMIUM and "
            "BROWSER_TEST_CHROMEDRIVER at them.",
            pytrace=False,
        )
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en-US",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",  # not the user's own profile
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Admin:
    """Drives the admin in the browser like a person: forms, buttons, links."""

    def __init__(self, driver: WebDriver, base_url: str, name: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.name = name
        self.shots: list[Path] = []

    def wait(self, timeout: float = 30) -> WebDriverWait[WebDriver]:
        return WebDriverWait(self.driver, timeout)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def login(self, username: str, password: str) -> None:
        self.open("/admin/login/")
        self.driver.find_element(By.NAME, "username").send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.submit(self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
        self.wait().until(lambda d: d.find_elements(By.ID, "user-tools"))

    def submit(self, element: object) -> None:
        """Click a button and wait for the next page."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()  # type: ignore[attr-defined]
        self.wait().until(lambda d: _stale(old))
        self.wait().until(lambda d: d.execute_script("return document.readyState") == "complete")

    def screenshot(self, step: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{step}.png"
        # The whole page, not just the window: grow the window to the document's height.
        width = self.driver.get_window_size()["width"]
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, max(int(height) + 140, 1000))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(width, 1000)
        self.shots.append(path)
        return path


def _stale(element: object) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.is_enabled()  # type: ignore[attr-defined]
    except StaleElementReferenceException:
        return True
    return False
