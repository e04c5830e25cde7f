"""The ops console in a real browser: Debian's Chromium driven by Selenium through Debian's
chromedriver (nothing downloaded at run time), against the Procfile's process and the fake
Dub. Login, the dead letters, the detail panes, one redrive, a bulk plan then redrive (Dub
gets each conversion once), try a mapping, publish and rollback, a POST without its CSRF
token refused, and /console a 404 when the token is not set.

``BRIDGE_TEST_SCREENSHOTS=docs`` writes the README's screenshots there."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core.outcomes import State
from bridge.core.settings import Settings
from bridge.ledger import Access, open_ledger
from tests.conftest import MAPPINGS, order
from tests.helpers.fakedub import FakeDub, sale_key
from tests.helpers.procs import REPO, ProcfileWeb, clean_env

pytestmark = pytest.mark.slow

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "browser-console-token-0123"
KEY = "dub_browser_key"

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _shots(tmp: Path) -> Path:
    target = os.environ.get("BRIDGE_TEST_SCREENSHOTS")
    return (REPO / target) if target else tmp


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-browser")


@pytest.fixture(scope="module")
def fake_dub() -> Iterator[FakeDub]:
    fake = FakeDub(api_key=KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def folder(workdir: Path) -> Path:
    maps = workdir / "maps"
    shutil.copytree(MAPPINGS, maps, ignore=shutil.ignore_patterns("samples"))
    return maps


@pytest.fixture(scope="module")
def web(workdir: Path, fake_dub: FakeDub, folder: Path) -> Iterator[ProcfileWeb]:
    env = clean_env(
        BRIDGE_DB=str(workdir / "ledger.sqlite3"),
        DUB_API_KEY=KEY,
        DUB_API_URL=fake_dub.url,
        BRIDGE_CONSOLE_TOKEN=TOKEN,
        BRIDGE_MAPPINGS_DIR=str(folder),
        BRIDGE_MAPPINGS_SOURCE="database",
        BRIDGE_RELOAD_SECONDS="1",
        WEB_CONCURRENCY="1",
    )
    proc = ProcfileWeb(env, workdir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser(workdir: Path) -> Iterator[Any]:
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        why = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("BRIDGE_TEST_BROWSER") == "1":
            pytest.fail(why)  # CI must run them, not skip
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={workdir / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    # The driver is named: Selenium Manager (which would download one) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def dead_letter(workdir: Path, message_id: str, **props: Any) -> None:
    """A sale the ledger holds as an invalid dead letter, its payload sendable now (as after
    a mapping was fixed), written by a second process as `bridge` commands do."""
    event = order(message_id, **props)
    event["context"] = {"traits": {"clickId": "cl_1", "email": "jane@example.com"}}
    settings = Settings.from_env({}, db_path=workdir / "ledger.sqlite3")
    ledger = open_ledger(settings, Access.WRITE)
    assert ledger is not None
    try:
        ledger.record(
            message_id, "order-sale", State.INVALID, action="sale", event="Order Completed",
            errors=["amount: was refused by the mapping of the day"], payload=event,
        )  # fmt: skip
    finally:
        ledger.close()


def log_in(browser: Any, web: ProcfileWeb, token: str = TOKEN) -> None:
    browser.get(web.url + "/console/login")
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    # The answer is a new page (a failed login's comes late: failures are slowed): wait
    # until the form we filled is gone, instead of reading the URL of the page before it.
    WebDriverWait(browser, 30).until(lambda _: gone(field))


def follow(browser: Any, element: Any) -> None:
    """Click a link or a form's button and wait for the page it leads to: reading an element
    right after the click can find the page before it (the same ids on both), which goes
    stale under the reader."""
    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(lambda _: gone(page))
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def gone(element: Any) -> bool:
    """Whether the element's page has been replaced. Chromedriver says so in two ways: a
    stale reference, or (when asked mid-navigation) a node that no longer belongs to the
    document."""
    try:
        element.tag_name  # noqa: B018 - any call on the element tells
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def listed(browser: Any) -> list[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-message-id]")
    return [r.get_attribute("data-message-id") for r in rows]


def test_login_wrong_then_right(browser: Any, web: ProcfileWeb, workdir: Path) -> None:
    """A wrong token shows a clear message and stays on the login form; the right one opens
    the events list."""
    browser.get(web.url + "/console/events")
    assert "/console/login" in browser.current_url
    log_in(browser, web, "not-the-token-at-all")
    assert "not right" in browser.find_element(By.ID, "login-error").text
    assert browser.get_cookie("bridge_console") is None or "/console/login" in browser.current_url
    browser.save_screenshot(str(_shots(workdir) / "console-login.png"))
    log_in(browser, web)
    assert browser.current_url.endswith("/console/events")
    cookie = browser.get_cookie("bridge_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"


def test_dead_letters_listed_and_detail_panes(
    browser: Any, web: ProcfileWeb, workdir: Path
) -> None:
    """Dead letters appear under state=dead, emails masked; the detail page has the three
    panes and the explain."""
    dead_letter(workdir, "br-1")
    browser.get(web.url + "/console/events?state=dead")
    assert "br-1" in listed(browser)
    assert "jane@example.com" not in browser.page_source
    browser.save_screenshot(str(_shots(workdir) / "console-events.png"))
    follow(browser, browser.find_element(By.LINK_TEXT, "br-1"))
    for pane in ("pane-payload", "pane-request", "pane-answers", "explain"):
        assert browser.find_element(By.ID, pane).is_displayed()
    assert "jane@example.com" in browser.find_element(By.ID, "pane-payload").text
    browser.save_screenshot(str(_shots(workdir) / "console-event.png"))


def test_one_redrive(browser: Any, web: ProcfileWeb, workdir: Path, fake_dub: FakeDub) -> None:
    """The Redrive button sends the conversion once and shows the outcome, and Dub's answer
    to that call in the answers pane."""
    dead_letter(workdir, "br-2")
    browser.get(web.url + "/console/events/br-2")
    follow(browser, browser.find_element(By.ID, "redrive"))
    result = browser.find_element(By.ID, "redrive-result")
    assert result.find_element(By.CSS_SELECTOR, "tr[data-outcome=delivered]")
    assert fake_dub.received_count(sale_key("o-br-2")) == 1
    # Dub's answer pane lists the redrive's call, with the table's headers.
    answers = browser.find_element(By.ID, "pane-answers")
    assert answers.find_element(By.CSS_SELECTOR, "tr[data-attempt='1'][data-status='200']")
    headers = [h.text for h in answers.find_elements(By.CSS_SELECTOR, "table.calls th")]
    assert headers[:4] == ["#", "Time", "Call", "HTTP status"]
    browser.save_screenshot(str(_shots(workdir) / "console-redriven.png"))


def test_bulk_plan_then_redrive_once(
    browser: Any, web: ProcfileWeb, workdir: Path, fake_dub: FakeDub
) -> None:
    """The plan says how many would be sent and sends nothing; 'Redrive N' sends each once;
    a plan afterwards finds nothing left."""
    ids = [f"bulk-{i}" for i in range(3)]
    for mid in ids:
        dead_letter(workdir, mid)
    browser.get(web.url + "/console/events?state=dead&q=")
    follow(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Plan a redrive"))
    plan = browser.find_element(By.ID, "plan")
    would = int(plan.find_element(By.CSS_SELECTOR, "[data-outcome=dry_run]").text)
    assert would >= 3
    assert all(fake_dub.received_count(sale_key(f"o-{m}")) == 0 for m in ids)
    browser.save_screenshot(str(_shots(workdir) / "console-redrive-plan.png"))
    button = browser.find_element(By.ID, "run-redrive")
    assert button.text.startswith("Redrive ")
    follow(browser, button)
    assert browser.find_element(By.ID, "redrive-outcomes")
    assert all(fake_dub.received_count(sale_key(f"o-{m}")) == 1 for m in ids)
    browser.get(web.url + "/console/redrive?state=dead")
    assert "no dead letter matches" in browser.find_element(By.ID, "plan").text
    assert not fake_dub.duplicates()


def test_try_a_mapping(browser: Any, web: ProcfileWeb, workdir: Path, fake_dub: FakeDub) -> None:
    """Try: an event pasted, the explain of each candidate mapping and the Dub body shown;
    nothing sent."""
    before = len(fake_dub.requests)
    browser.get(web.url + "/console/try")
    area = browser.find_element(By.NAME, "event")
    area.send_keys('{"type": "track", "event": "Order Completed", "messageId": "try-1",'
                   ' "userId": "u-1", "timestamp": "2100-01-01T00:00:00Z",'
                   ' "properties": {"order_id": "T-1", "revenue": 12.5, "currency": "EUR"}}')  # fmt: skip
    follow(browser, browser.find_element(By.ID, "try"))
    section = browser.find_element(By.CSS_SELECTOR, "#explain [data-mapping=order-sale]")
    assert '"amount": 1250' in section.find_element(By.CSS_SELECTOR, ".dub-body").text
    browser.save_screenshot(str(_shots(workdir) / "console-try.png"))
    assert len(fake_dub.requests) == before


def test_publish_and_rollback(browser: Any, web: ProcfileWeb, workdir: Path, folder: Path) -> None:
    """Publish the folder, change it and publish again, then roll back to the first: the
    history shows each, and the active set follows."""
    browser.get(web.url + "/console/mappings")
    browser.find_element(By.ID, "message").send_keys("first")
    follow(browser, browser.find_element(By.ID, "publish-button"))
    first = browser.find_element(By.ID, "notice").text.split()[1].rstrip(":")
    sales = folder / "sales.yaml"
    sales.write_text(sales.read_text().replace("Completed orders,", "Completed orders (v2),", 1))
    browser.find_element(By.ID, "message").send_keys("second")
    follow(browser, browser.find_element(By.ID, "publish-button"))
    second = browser.find_element(By.ID, "notice").text.split()[1].rstrip(":")
    assert first != second
    browser.get(web.url + "/console/mappings")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "#diff button[type=submit]"))
    assert "Completed orders (v2)" in browser.find_element(By.ID, "file-diff").text
    browser.save_screenshot(str(_shots(workdir) / "console-mappings.png"))
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-version='{first}']")
    follow(browser, row.find_element(By.CSS_SELECTOR, "button"))
    assert f"rolled back to {first}" in browser.find_element(By.ID, "notice").text


def test_a_post_without_csrf_is_refused(browser: Any, web: ProcfileWeb, workdir: Path) -> None:
    """A POST from the logged-in browser without the CSRF token gets 403; the dead letter
    stays."""
    dead_letter(workdir, "br-csrf")
    browser.get(web.url + "/console/events")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/console/events/br-csrf/redrive', {method: 'POST', credentials: 'same-origin'})"
        ".then(r => done(r.status));"
    )
    assert status == 403
    browser.get(web.url + "/console/events/br-csrf")
    assert browser.find_element(By.ID, "redrive")


def test_console_is_404_when_off(workdir: Path, fake_dub: FakeDub) -> None:
    """Without BRIDGE_CONSOLE_TOKEN the Procfile process answers 404 at /console."""
    env = clean_env(
        BRIDGE_DB=str(workdir / "off.sqlite3"), DUB_API_KEY=KEY, DUB_API_URL=fake_dub.url,
        WEB_CONCURRENCY="1",
    )  # fmt: skip
    off = ProcfileWeb(env, workdir, name="off")
    off.start()
    try:
        for path in ("/console", "/console/login"):
            assert requests.get(off.url + path, timeout=5, allow_redirects=False).status_code == 404
    finally:
        off.stop()
