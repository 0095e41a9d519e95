"""Make docs/console-overview.png (the README's screenshot) from a run of the example.

    .venv/bin/python scripts/console_screenshot.py

Starts a throwaway redis-server, the worker on config.example.toml with the
example app, the demo producer, three events the example's handlers dead-letter,
and `agentstream web`; then Debian's chromium (headless, through chromedriver)
takes the screenshot. Needs the dev extra and chromium + chromium-driver.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from redis_server import RedisServer, free_port, wait_for

root = pathlib.Path(__file__).resolve().parents[1]
os.chdir(root)  # the example app and config.example.toml are found from here
tmp = pathlib.Path(tempfile.mkdtemp())
srv = RedisServer(tmp / "redis")
srv.start()
web_port = free_port()
env = {
    **os.environ,
    "AGENTSTREAM_REDIS__URL": srv.url,
    "AGENTSTREAM_METRICS__PORT": str(free_port()),
    "AGENTSTREAM_WEB__PORT": str(web_port),
    "AGENTSTREAM_WEB__REFRESH_S": "2",
    "AGENTSTREAM_LOG__FORMAT": "json",
}
bin_ = root / ".venv/bin"
procs = []
try:
    procs.append(
        subprocess.Popen(
            [bin_ / "agentstream-worker", "--config", "config.example.toml"],
            env=env,
            stdout=open(tmp / "w.log", "w"),
            stderr=subprocess.STDOUT,
        )
    )
    procs.append(
        subprocess.Popen(
            [bin_ / "agentstream", "--config", "config.example.toml", "web"],
            env=env,
            stdout=open(tmp / "web.log", "w"),
            stderr=subprocess.STDOUT,
        )
    )
    procs.append(
        subprocess.Popen(
            [
                bin_ / "python",
                "-m",
                "examples.producer",
                "--runs",
                "0",
                "--interval-s",
                "0.05",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
    )
    r = redis.Redis.from_url(srv.url)
    wait_for(lambda: r.exists("agent_output"), 30)
    # Events the example's handlers cannot take: a tool call naming no tool, a token without a run.
    for data in [
        '{"run_id": "run-7c1f", "args": {"city": "Paris"}}',
        '{"run_id": "run-91d2", "args": {}}',
    ]:
        subprocess.run(
            [
                bin_ / "agentstream",
                "--config",
                "config.example.toml",
                "publish",
                "agent_output",
                "tool_call",
                data,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [
            bin_ / "agentstream",
            "--config",
            "config.example.toml",
            "publish",
            "agent_output",
            "token",
            '{"token": "orphan"}',
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_for(lambda: r.xlen("agent_output:dlq") >= 3, 30)
    time.sleep(25)  # let the console sample some rates for the sparkline

    o = Options()
    o.binary_location = "/usr/bin/chromium"
    for a in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,420",
        f"--user-data-dir={tmp / 'prof'}",
    ]:
        o.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    d.get(f"http://127.0.0.1:{web_port}/")
    time.sleep(1)
    (root / "docs").mkdir(exist_ok=True)
    d.save_screenshot(str(root / "docs/console-overview.png"))
    d.quit()
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=40)
    srv.stop()
