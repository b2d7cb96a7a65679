"""The kiosk example page in a real browser: headless Chromium driven by Selenium.

The service (examples/kiosk/kiosk_service.py) runs as a program, serves its page over
HTTP, pushes metrics over a WebSocket on the same port, and puts an announcement that
arrives over Redis on every screen. CI installs Debian's chromium and chromium-driver
and sets DAEBUS_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from _helpers import EXAMPLES, ServiceProcess, wait_for
from _servers import free_port
from daebus import DaebusCaller

EXAMPLE = EXAMPLES / "kiosk" / "kiosk_service.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver: Any = None
if CHROMIUM and CHROMEDRIVER:
    webdriver = pytest.importorskip("selenium.webdriver")

if webdriver is None:
    reason = "headless Chromium test needs chromium, chromium-driver and selenium"
    if os.environ.get("DAEBUS_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"DAEBUS_REQUIRE_BROWSER=1 but: {reason}")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def kiosk(redis_url: str) -> Iterator[str]:
    port = free_port()
    env = {"KIOSK_PORT": str(port), "KIOSK_INTERVAL": "0.3"}
    with ServiceProcess(EXAMPLE, redis_url=redis_url, env=env) as service:
        service.wait_ready("kiosk")
        yield f"http://127.0.0.1:{port}/"
        assert service.terminate() == 0


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(browser: Any, element_id: str) -> str:
    return str(browser.find_element("id", element_id).text)


def test_the_kiosk_page_shows_pushed_data_http_data_and_a_broadcast(
    kiosk: str, browser: Any, redis_url: str
) -> None:
    browser.get(kiosk)
    wait_for(lambda: text_of(browser, "status") == "connected", timeout=15)
    # The background job's pushes arrive over the WebSocket...
    wait_for(lambda: "uptime" in text_of(browser, "live"), timeout=15)
    first = json.loads(text_of(browser, "live"))
    wait_for(lambda: json.loads(text_of(browser, "live"))["broadcasts"] > first["broadcasts"])
    assert json.loads(text_of(browser, "live"))["clients"] == 1
    # ...the page's fetch() reached the HTTP route...
    wait_for(lambda: "requests" in text_of(browser, "http"), timeout=15)
    assert json.loads(text_of(browser, "http"))["requests"] >= 1
    # ...and a request over Redis puts an announcement on the screen.
    with DaebusCaller("kiosk", redis_url=redis_url) as caller:
        assert caller.send_request("announce", {"text": "Hello, kiosk"}) == {"screens": 1}
    wait_for(lambda: text_of(browser, "announcement") == "Hello, kiosk", timeout=15)
    # The button fetches again.
    browser.find_element("id", "refresh").click()
    wait_for(lambda: json.loads(text_of(browser, "http"))["requests"] >= 2, timeout=15)
