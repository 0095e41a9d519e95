"""The console in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromium-driver (no browser download), with a real worker.

Open the overview, follow a dead letter to its page, replay it and see the
worker handle it; pause the subscription and see the worker stop reading, then
resume. A screenshot of the overview is saved to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from web_harness import write_config

from redis_server import free_port, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BIN = Path(sys.executable).parent

APP = """
import os

import redis

from agentstream import App, DeadLetter, Event

app = App()
_redis = redis.Redis.from_url(os.environ["BROWSER_TEST_REDIS"])


@app.handler("order")
def on_order(event: Event) -> None:
    if not _redis.exists("browser:fixed"):
        raise DeadLetter("order service rejected it")
    _redis.rpush("browser:handled", event.data["n"])
"""


def _require(path: str) -> str:
    if Path(path).exists():
        return path
    found = shutil.which(Path(path).name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(
            f"{path} is required in CI (apt-get install chromium chromium-driver)"
        )
    pytest.skip(f"{path} not installed")


@pytest.fixture(name="browser")
def _browser(tmp_path: Path) -> Iterator[Any]:
    chromium, driver_path = _require(CHROMIUM), _require(CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1500,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)  # fmt: skip
    driver.set_page_load_timeout(30)
    # Lookups wait for the element (a page still loading after a click, htmx).
    driver.implicitly_wait(10)
    try:
        yield driver
    finally:
        driver.quit()


def _start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def _metric(port: int, name: str, stream: str) -> float | None:
    text = _get(f"http://127.0.0.1:{port}/metrics") or ""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'stream="{stream}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_console_in_a_browser(
    browser: Any, tmp_path: Path, redis_url: str, stream_name: str
) -> None:
    """Overview -> dead letter -> replay -> handled; pause stops reading; resume."""
    from selenium.webdriver.common.by import By

    client = redis.Redis.from_url(redis_url)
    client.delete("browser:fixed", "browser:handled")
    (tmp_path / "browser_app.py").write_text(APP)
    metrics_port, web_port = free_port(), free_port()
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        [stream_name],
        {"port": web_port, "refresh_s": 1},
        top={"app": "browser_app:app", "name_prefix": "browser", "consumers": 2},
        metrics={"port": metrics_port},
    )
    env = {**os.environ, "BROWSER_TEST_REDIS": redis_url, "PYTHONPATH": str(tmp_path)}
    worker = _start([str(BIN / "agentstream-worker"), "--config", str(config)], tmp_path, env, tmp_path / "worker.log")  # fmt: skip
    console = _start([str(BIN / "agentstream"), "--config", str(config), "web"], tmp_path, env, tmp_path / "web.log")  # fmt: skip
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_for(lambda: _get(base + "/") is not None, timeout=30, interval=0.1)
        wait_for(lambda: _metric(metrics_port, "agentstream_subscription_paused", stream_name) == 0, timeout=30, interval=0.1)  # fmt: skip

        # A dead letter: the handler rejects the order until the fix is deployed.
        client.xadd(
            stream_name, {"type": "order", "timestamp": "1", "data": '{"n": 1}'}
        )
        dlq = f"{stream_name}:dlq"
        wait_for(lambda: client.xlen(dlq) == 1, timeout=30, interval=0.05)

        browser.get(base + "/")
        assert stream_name in browser.page_source
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "console-overview.png"))
        browser.find_element(By.LINK_TEXT, "1").click()  # the dead-letter count
        assert "Dead letters of" in browser.title
        browser.find_element(By.CSS_SELECTOR, "a.dl").click()
        assert "order service rejected it" in browser.page_source
        client.set("browser:fixed", "1")
        browser.find_element(By.XPATH, "//button[text()='Replay']").click()
        assert browser.find_element(By.ID, "count").text == "1"
        browser.find_element(By.ID, "confirm").click()
        assert browser.find_element(By.ID, "result").text == f"replayed 1 dead letter from {dlq}"  # fmt: skip
        wait_for(lambda: client.lrange("browser:handled", 0, -1) == [b"1"], timeout=30, interval=0.05)  # fmt: skip
        assert client.xlen(dlq) == 0

        # Pause from the overview: the worker stops reading, then resumes.
        browser.get(base + "/")
        browser.find_element(By.XPATH, "//button[text()='Pause']").click()
        browser.find_element(By.ID, "confirm").click()
        assert browser.find_element(By.ID, "result").text.endswith("paused")
        wait_for(lambda: _metric(metrics_port, "agentstream_subscription_paused", stream_name) == 1, timeout=30, interval=0.1)  # fmt: skip

        def quiet_since(moment: float) -> bool:
            # No XREADGROUP since `moment` (and none blocked): CLIENT LIST's
            # idle is the seconds since a connection's last command. Running
            # consumers read at least every 0.7 s; only the worker reads here.
            now = time.monotonic()
            readers = [c for c in client.client_list() if c["cmd"] == "xreadgroup"]
            return now - moment > 2 and all(
                "b" not in c["flags"] and int(c["idle"]) > now - moment + 1
                for c in readers
            )

        wait_for(lambda: quiet_since(time.monotonic() - 2), timeout=30, interval=0.1)
        published = time.monotonic()
        client.xadd(
            stream_name, {"type": "order", "timestamp": "1", "data": '{"n": 2}'}
        )
        wait_for(lambda: quiet_since(published), timeout=30, interval=0.1)
        assert client.lrange("browser:handled", 0, -1) == [b"1"]
        [group] = client.xinfo_groups(stream_name)
        assert group["lag"] == 1
        browser.get(base + "/")
        assert "paused" in browser.page_source
        browser.find_element(By.XPATH, "//button[text()='Resume']").click()
        browser.find_element(By.ID, "confirm").click()
        wait_for(lambda: client.lrange("browser:handled", 0, -1) == [b"1", b"2"], timeout=30, interval=0.05)  # fmt: skip
        browser.get(base + "/")
        browser.save_screenshot(str(ARTIFACTS / "console-overview.png"))
    finally:
        _stop(console)
        _stop(worker)
        client.close()
    assert console.returncode == 0, (tmp_path / "web.log").read_text()[-3000:]
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
