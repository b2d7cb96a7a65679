"""The dashboard in a real browser: headless Chromium driven by Selenium.

Two services of the demo run as programs (``daebus run daebus.demo:inventory``, two
instances, and ``daebus.demo:shop``), the dashboard runs as ``daebus dashboard``, and
the page is driven as a person would: the services appear, a call made from the page
is answered (its streamed parts shown), a message is published, the traffic counters
move. The page is saved as ``dashboard.png`` in the test's folder (docs/dashboard.png
is one of these). CI installs Debian's chromium and chromium-driver and sets
DAEBUS_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import ServiceProcess, wait_for
from _servers import RedisServer
from daebus import broadcast

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver: Any = None
StaleElementReferenceException: Any = Exception
if CHROMIUM and CHROMEDRIVER:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import StaleElementReferenceException

if webdriver is None:
    reason = "headless Chromium test needs chromium, chromium-driver and selenium"
    if os.environ.get("DAEBUS_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"DAEBUS_REQUIRE_BROWSER=1 but: {reason}")
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def daebus_command(url: str, *args: str, name: str) -> ServiceProcess:
    return ServiceProcess(
        module="daebus.cli", args=[*args, "--redis-url", url], redis_url=url, name=name
    )


@pytest.fixture
def services(private_redis: RedisServer) -> Iterator[str]:
    """Two demo services, inventory on two instances; yields the server's URL."""
    url = private_redis.url
    started = [
        daebus_command(url, "run", "daebus.demo:inventory", name="inventory-1"),
        daebus_command(url, "run", "daebus.demo:inventory", name="inventory-2"),
        daebus_command(url, "run", "daebus.demo:shop", name="shop"),
    ]
    try:
        for process in started:
            process.start()
        started[0].wait_ready("inventory", count=2, timeout=30)
        started[2].wait_ready("shop", timeout=30)
        yield url
    finally:
        for process in started:
            process.close()


@pytest.fixture
def dashboard(services: str) -> Iterator[str]:
    with daebus_command(services, "dashboard", "--port", "0", name="dashboard") as process:
        found = wait_for(
            lambda: re.search(r"at (http://127\.0\.0\.1:\d+/)", process.stdout()),
            timeout=30,
            message=lambda: process.output(),
        )
        yield found.group(1)
        assert process.terminate() == 0, process.output()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1900",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(browser: Any, element_id: str) -> str:
    return str(browser.find_element("id", element_id).text)


def number_of(browser: Any, element_id: str) -> int:
    text = text_of(browser, element_id)
    return int(text) if text.isdigit() else -1


def fill(browser: Any, element_id: str, text: str) -> None:
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(text)


def cards(browser: Any) -> dict[str, str]:
    """The services shown, by name: each card's text ({} while the page redraws them)."""
    try:
        found = browser.find_elements("css selector", "#services .service")
        return {card.get_attribute("data-service"): card.text for card in found}
    except StaleElementReferenceException:  # redrawn by a snapshot meanwhile
        return {}


def texts(browser: Any, selector: str) -> list[str]:
    """The text of each element ``selector`` finds ([] while the page redraws them)."""
    try:
        return [element.text for element in browser.find_elements("css selector", selector)]
    except StaleElementReferenceException:
        return []


def call_from_the_page(browser: Any, service: str, action: str, payload: str) -> Any:
    fill(browser, "call-service", service)
    fill(browser, "call-action", action)
    fill(browser, "call-payload", payload)
    browser.find_element("id", "call-button").click()
    wait_for(
        lambda: text_of(browser, "call-status").startswith(("answered", "failed")),
        timeout=20,
        message=lambda: f"no answer: {text_of(browser, 'call-status')!r}",
    )
    assert text_of(browser, "call-status").startswith("answered"), text_of(browser, "call-reply")
    return json.loads(text_of(browser, "call-reply"))


def test_the_dashboard_shows_the_services_and_calls_them(
    dashboard: str,
    browser: Any,
    tmp_path: Path,
    private_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A durable channel nobody reads yet: its backlog is shown.
    monkeypatch.setenv("DAEBUS_REDIS_URL", private_redis.url)
    for n in range(3):
        broadcast.send("orders", {"order": n}, durable=True)
    browser.get(dashboard)
    wait_for(lambda: text_of(browser, "status") == "connected", timeout=20)
    # Both services appear, inventory with its two instances and its action.
    shown = wait_for(
        lambda: (
            (found := cards(browser))
            and "2 instances" in found.get("inventory", "")
            and "shop" in found
            and found
        ),
        timeout=20,
    )
    assert "stock" in shown["inventory"]
    assert "order" in shown["shop"]
    assert "inventory.events" in shown["shop"]  # its listener
    before = number_of(browser, "traffic-messages")
    # The bad JSON of a payload is said, and nothing is sent.
    fill(browser, "call-service", "inventory")
    fill(browser, "call-action", "stock")
    fill(browser, "call-payload", "{oops")
    browser.find_element("id", "call-button").click()
    assert "not valid JSON" in text_of(browser, "call-status")

    # A call across both services: shop's order asks inventory for its stock.
    reply = call_from_the_page(browser, "shop", "order", '{"item": "gizmo"}')
    assert reply == {"item": "gizmo", "in_stock": 6, "warehouses": 3}
    # A streamed reply: its parts are shown as they come, then the reply.
    reply = call_from_the_page(browser, "inventory", "stock", '{"item": "widget"}')
    assert reply == {"item": "widget", "total": 6}
    parts = texts(browser, "#call-parts li")
    assert [json.loads(p)["warehouse"] for p in parts] == ["north", "south", "east"]

    # Publishing: the shop listens on inventory.events (the dashboard hears it too).
    fill(browser, "publish-channel", "inventory.events")
    fill(browser, "publish-message", '{"event": "restocked", "item": "gizmo"}')
    browser.find_element("id", "publish-button").click()
    wait_for(lambda: text_of(browser, "publish-result").startswith("received by"), timeout=20)
    assert int(text_of(browser, "publish-result").split()[-1]) >= 2

    # The counters moved: messages seen, the service's channel, the action's latency.
    wait_for(lambda: number_of(browser, "traffic-messages") > before, timeout=20)
    wait_for(lambda: texts(browser, '#traffic tr[data-channel="inventory"]'), timeout=20)
    [row] = wait_for(lambda: texts(browser, '#actions tr[data-action="shop order"]'), timeout=20)
    assert row.split()[:3] == ["shop", "order", "1"]  # one call, timed
    # inventory's stock: called by shop, then from the page; both timed.
    wait_for(
        lambda: (
            [r.split()[:3] for r in texts(browser, '#actions tr[data-action="inventory stock"]')]
            == [["inventory", "stock", "2"]]
        ),
        timeout=20,
    )
    # inventory.events: a broadcast by each stock call, and the message published.
    wait_for(
        lambda: (
            [r.split()[3] for r in texts(browser, '#traffic tr[data-channel="inventory.events"]')]
            == ["3"]
        ),
        timeout=20,
    )

    # The durable channel's backlog (the server's figures are read every 5 s).
    wait_for(
        lambda: [r.split()[:2] for r in texts(browser, "#durable tr")] == [["orders", "3"]],
        timeout=20,
    )

    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_the_page_takes_its_token_from_the_fragment(
    private_redis: RedisServer, browser: Any
) -> None:
    token = "a-token-for-the-page"
    args = ["dashboard", "--port", "0", "--token", token]
    with daebus_command(private_redis.url, *args, name="dashboard") as process:
        found = wait_for(
            lambda: re.search(r"at (http://127\.0\.0\.1:\d+/)", process.stdout()),
            timeout=30,
            message=lambda: process.output(),
        )
        address = found.group(1)
        # Without it, the page asks for it; a wrong one is refused.
        browser.get(address)
        wait_for(lambda: browser.find_element("id", "token-form").is_displayed(), timeout=20)
        fill(browser, "token-input", "not-the-token")
        browser.find_element("css selector", "#token-form button").click()
        wait_for(lambda: text_of(browser, "token-error") == "that token was refused", timeout=20)
        fill(browser, "token-input", token)
        browser.find_element("css selector", "#token-form button").click()
        wait_for(lambda: text_of(browser, "status") == "connected", timeout=20)
        # From the fragment: used, then taken out of the address bar.
        browser.execute_script("sessionStorage.clear()")
        browser.get("about:blank")
        browser.get(f"{address}#token={token}")
        wait_for(lambda: text_of(browser, "status") == "connected", timeout=20)
        wait_for(lambda: token not in browser.current_url, timeout=20)
        assert not browser.find_element("id", "token-form").is_displayed()
        assert process.terminate() == 0, process.output()
        assert token not in process.stderr()
