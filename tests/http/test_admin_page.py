"""The admin page in a real browser: Debian's ``chromium`` driven by Selenium through
``chromedriver`` (``.ci/run`` installs both; never a downloaded browser build).

Against a live ``tidemq serve`` with users: seed a topic, a group and a dead letter through the
API, sign in on the page with a token, check the lag the page shows equals the API's, redrive
one selected dead letter and then all of them (each with the confirmation) and see the API
count them gone. Screenshots are saved
under the test's tmp path (printed)."""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import PASSWORDS, write_users

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run installs them)")

_HTTP_LINE = re.compile(rb"tidemq http on [\d.]+:(\d+)")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A ``tidemq serve`` with users and the HTTP API; yields (base URL, ops' token)."""
    users = tmp_path / "users.json"
    _, token = write_users(users)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidemq.server", "--memory", "--port", "0", "--http-port", "0",
         "--users", str(users), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, port = b"", None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        if sel.select(timeout=1):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            m = _HTTP_LINE.search(buf)
            port = int(m.group(1)) if m else None
    sel.close()
    try:
        assert port is not None, f"the server did not start: {buf!r}"
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    auth = base64.b64encode(f"ops:{PASSWORDS['ops']}".encode()).decode()
    req = urllib.request.Request(
        base + path, method=method, headers={"Authorization": "Basic " + auth,
                                             "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else None


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                # Talk to nothing but the test server (no updates, no sync, no phishing lists).
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--no-default-browser-check",
                "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                "--metrics-recording-only", "--no-pings",
                "--disable-features=OptimizationHints,MediaRouter,Translate"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_AVOID_STATS", "true")  # (Selenium Manager is not used anyway)
    # The driver is given: Selenium Manager (which would download one) is never run.
    return webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=opts)


def test_admin_page_shows_lag_and_redrives(live: tuple[str, str], tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, token = live
    T = "/api/v1/topics"
    call(base, "PUT", f"{T}/orders", {"partitions": 2})
    call(base, "PUT", f"{T}/orders/groups/billing", {"max_deliveries": 3})
    call(base, "POST", f"{T}/orders/messages", [{"payload": f"order {i}", "key": str(i)}
                                                 for i in range(5)])
    got = call(base, "POST", f"{T}/orders/groups/billing/receive", {"max_messages": 2})
    call(base, "POST", f"{T}/orders/groups/billing/reject",
         {"receipts": [m["receipt"] for m in got["messages"]], "reason": "bad order"})
    api_group = call(base, "GET", f"{T}/orders/groups/billing")
    assert api_group["lag"] == 3
    assert call(base, "GET", f"{T}/orders/groups/billing/dlq")["count"] == 2
    dead = call(base, "GET", f"{T}/orders/groups/billing/dlq/messages")["messages"]

    driver = browser()
    try:
        # Live views redraw every 2 s: an element read during a redraw is stale, read again.
        wait = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,))

        def text(element_id: str) -> str:
            return str(wait.until(lambda d: d.find_element(By.ID, element_id).text))

        driver.get(base + "/")
        # Auth is on: the page asks to sign in; use the token field.
        wait.until(EC.visibility_of_element_located((By.ID, "signin-panel")))
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "signin").click()
        wait.until(EC.presence_of_element_located((By.ID, "rate-pub")))
        driver.save_screenshot(str(tmp_path / "overview.png"))

        driver.get(base + "/#/topics/orders/groups/billing")
        shown = int(text("group-lag").replace(",", ""))
        assert shown == api_group["lag"] == call(base, "GET", f"{T}/orders/groups/billing")["lag"]
        assert text("group-dead") == "2"
        driver.save_screenshot(str(tmp_path / "group.png"))

        driver.find_element(By.ID, "dlq-link").click()
        assert text("dlq-count") == "2"
        assert "bad order" in text("dlq-table")
        # Redrive selected: tick the first dead letter's box, confirm.
        assert not driver.find_element(By.ID, "redrive-selected").is_enabled()
        driver.find_element(By.CSS_SELECTOR, f'input.dlq-pick[data-id="{dead[0]["id"]}"]').click()
        driver.find_element(By.ID, "redrive-selected").click()
        confirm = wait.until(EC.visibility_of_element_located((By.ID, "confirm")))
        assert "Redrive the 1 selected dead letters" in confirm.text
        driver.find_element(By.ID, "confirm-yes").click()
        wait.until(lambda d: d.find_element(By.ID, "dlq-count").text == "1")
        assert "Redrove 1" in text("status")
        left = call(base, "GET", f"{T}/orders/groups/billing/dlq/messages")["messages"]
        assert [m["id"] for m in left] == [dead[1]["id"]]
        driver.save_screenshot(str(tmp_path / "redrive-selected.png"))

        driver.find_element(By.ID, "redrive-all").click()
        confirm = wait.until(EC.visibility_of_element_located((By.ID, "confirm")))
        assert "Redrive all 1 dead letters" in confirm.text
        driver.save_screenshot(str(tmp_path / "confirm.png"))
        driver.find_element(By.ID, "confirm-yes").click()
        wait.until(lambda d: d.find_element(By.ID, "dlq-count").text == "0")
        assert "Redrove 1" in text("status")
        shot = tmp_path / "dead-letters.png"
        driver.save_screenshot(str(shot))
        print(f"\nadmin page screenshots: {tmp_path}/"
              "{overview,group,redrive-selected,confirm,dead-letters}.png")
    finally:
        driver.quit()
    assert call(base, "GET", f"{T}/orders/groups/billing/dlq")["count"] == 0
    # The redriven message is the group's again.
    assert call(base, "GET", f"{T}/orders/groups/billing")["lag"] == 5
