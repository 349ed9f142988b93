"""Headless Chromium (Debian chromium + chromium-driver, driven through Selenium) placing WebRTC echo calls.

The browser's camera and microphone are Chromium's fake devices (a test pattern and a beep). The page is the
media server's own echo page; its getStats() is read through Selenium. Plain http is treated as a secure origin
for the page's own address only, since browsers give the camera to secure origins alone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docker_xms.domain.webrtc import Snapshot, snapshot
from docker_xms.errors import XmsError

PACKAGES = "chromium and chromium-driver"
_BROWSERS = ("chromium", "chromium-browser")
# One getStats() reading of the page's peer connection, with the page's own state.
_READ_STATS = """
var done = arguments[arguments.length - 1];
var d = window.dxms;
if (!d || !d.pc) { done({state: d ? d.state : "no page", error: d ? d.error : "", stats: []}); return; }
d.pc.getStats().then(function (report) {
  var out = [];
  report.forEach(function (s) { out.push(s); });
  done({state: d.state, error: d.error, connection: d.pc.connectionState, stats: JSON.parse(JSON.stringify(out))});
}, function (e) { done({state: d.state, error: String(e), stats: []}); });
"""


class BrowserMissing(XmsError):
    """Chromium or its driver (or Selenium) is not installed on this host."""


@dataclass(frozen=True)
class PageState:
    state: str
    error: str
    stats: Snapshot


def _find() -> tuple[str, str]:
    browser = next((found for name in _BROWSERS if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise BrowserMissing(
            f"The test call needs a headless browser: install the Debian packages {PACKAGES} "
            "(apt-get install chromium chromium-driver)."
        )
    return browser, driver


def check_installed() -> None:
    """Raise BrowserMissing with the packages to install when Chromium, chromedriver or Selenium is missing."""
    _find()
    try:
        import selenium  # noqa: F401, PLC0415 - an optional extra, looked for only when a call needs it
    except ImportError:
        raise BrowserMissing(
            "The test call drives Chromium through Selenium, which is not installed: pip install 'docker-xms[webrtc]'."
        ) from None


class Browser:
    """One headless Chromium; each call is a tab of its own."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.tabs: list[str] = []

    def open(self, url: str) -> str:
        if self.tabs:
            self.driver.switch_to.new_window("tab")
        self.driver.get(url)
        handle = str(self.driver.current_window_handle)
        self.tabs.append(handle)
        return handle

    def read(self, tab: str) -> PageState:
        self.driver.switch_to.window(tab)
        raw = self.driver.execute_async_script(_READ_STATS) or {}
        stats = snapshot(raw.get("stats") or [], str(raw.get("connection") or ""))
        return PageState(str(raw.get("state", "")), str(raw.get("error") or ""), stats)

    def wait_connected(self, tab: str, timeout: float) -> PageState:
        """The page's state once its call is connected over DTLS with media coming in, or when `timeout` ends."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.read(tab)
            flowing = any(s.packets_received > 0 for s in state.stats.streams)
            if (state.stats.connected and flowing) or state.state.startswith(("failed", "hangup")):
                return state
            if time.monotonic() >= deadline:
                return state
            time.sleep(0.25)

    def screenshot(self, tab: str, path: Path) -> None:
        self.driver.switch_to.window(tab)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


@contextmanager
def chromium(secure_origin: str) -> Iterator[Browser]:
    """A headless Chromium with fake camera and microphone that takes `secure_origin` (http://host:port) as secure."""
    browser, driver_path = _find()
    check_installed()
    from selenium import webdriver  # noqa: PLC0415 - an optional extra, loaded only for a call
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    origin = "{0.scheme}://{0.netloc}".format(urlsplit(secure_origin))
    with tempfile.TemporaryDirectory(prefix="docker-xms-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (
            "--headless=new",
            # As root (a test host, a namespace) Chromium's own sandbox cannot start.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--unsafely-treat-insecure-origin-as-secure={origin}",
            # Host candidates with their real addresses, not mDNS names the server cannot resolve.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            # Background tabs keep their timers and media: each tab is a call of its own.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1000,760",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        # Selenium's errors name no stable class for a browser that fails to start.
        except Exception as exc:
            raise XmsError(f"Chromium did not start under chromedriver: {str(exc).splitlines()[0]}.") from None
        driver.set_script_timeout(15)
        try:
            yield Browser(driver)
        finally:
            driver.quit()


def sample(
    browser: Browser, tabs: list[str], seconds: float, on_tick: Callable[[float], None] = lambda _: None
) -> tuple[list[PageState], list[PageState]]:
    """Each tab's reading now and `seconds` later."""
    first = [browser.read(tab) for tab in tabs]
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        on_tick(max(0.0, end - time.monotonic()))
    last = [browser.read(tab) for tab in tabs]
    return first, last
