"""Headless Chromium and local servers for the browser tests.

Debian's ``chromium`` and ``chromium-driver`` (scripts/system-deps.sh installs them): Selenium
is given /usr/bin/chromedriver and SE_OFFLINE, so it never downloads a driver or a browser.
Each server runs in its own session and, with every process it started (kernels, workers),
is stopped when the test ends; ``stop`` says if any survived.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from dslib.env import outputs_dir

CHROMIUM = Path(os.environ.get("DSLIB_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DSLIB_CHROMEDRIVER", "/usr/bin/chromedriver"))


SCREENSHOTS = outputs_dir() / "test-screenshots"  # fixed at import: tests point DSLIB_OUTPUTS elsewhere


def screenshot_dir(name: str) -> Path:
    path = SCREENSHOTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """A headless Chromium driven by Selenium through the system chromedriver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver: "
                    "scripts/system-deps.sh installs them)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3).close()
        return True
    except urllib.error.HTTPError:  # any HTTP status: the server is up
        return True
    except OSError:
        return False


@contextlib.contextmanager
def server(cmd: list[str], url: str, log: Path, env: dict[str, str] | None = None,
           timeout: float = 180, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until the block ends; wait for ``url`` to answer first."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not come up at {url} (exit {proc.poll()}):\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield proc
    finally:
        left = stop(proc)
        assert not left, f"processes left behind by {cmd[0]}: {left}"


def stop(proc: subprocess.Popen, grace: float = 20) -> list[str]:
    """SIGTERM the server's session (it shuts its kernels/workers down), then SIGKILL whatever
    of it and its descendants remains; returns the survivors (none expected)."""
    import psutil

    try:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    survivors = []
    for pid in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                survivors.append(f"{pid} {' '.join(p.cmdline()[:3])}")
    return survivors
