"""JupyterLab as a reader uses it: started as `make lab` starts it, a chapter run through the
UI in headless Chromium with the project's kernel, figures and progress bars rendered."""
from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request

import nbformat
import papermill as pm
import pytest
from browser import chromium, screenshot_dir, server  # noqa: F401 (fixture)

from dslib.env import REPO_ROOT
from dslib.jobs import lab
from dslib.jobs import params as P
from dslib.dist.ports import free_port

CHAPTER = REPO_ROOT / "notebooks" / "00_tour.ipynb"
RUN_TIMEOUT_S = 300
NEWS_PROMPT_S = 15
PROGRESS_CELL = "from dslib.progress import progress_bar\nfor _ in progress_bar(range(3), desc='steps'):\n    pass"


def _chapter_copy(folder):
    """00_tour with the smoke parameters written in (as papermill injects them), plus one
    progress-bar cell: a throwaway copy, the chapter itself is not changed."""
    path = folder / CHAPTER.name
    pm.execute_notebook(str(CHAPTER), str(path), parameters=P.resolve(CHAPTER, "smoke"), prepare_only=True,
                        progress_bar=False)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROGRESS_CELL))
    nbformat.write(nb, path)
    return path


def _wait(driver, script, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1)
    driver.save_screenshot(str(screenshot_dir("lab") / "timed-out.png"))
    status = driver.execute_script("return document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status")
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (kernel status {status!r}; screenshot timed-out.png)")


def _click_menu(driver, menu, command):
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//*[text()='{menu}']]").click()
    _wait(driver, f"return document.querySelector(\"li[data-command='{command}']\")", 10, f"menu item {command}")
    driver.find_element(By.CSS_SELECTOR, f"li[data-command='{command}']").click()


def test_chapter_runs_in_jupyterlab_through_the_ui(chromium, tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _chapter_copy(notebooks)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = lab.lab_env() | {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
                           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
                           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
                           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
                           "DSLIB_OUTPUTS": str(tmp_path / "outputs")}
    shots, log = screenshot_dir("lab"), tmp_path / "jupyterlab.log"
    started = time.perf_counter()
    with server(lab.lab_command(notebooks, port), f"{base}/api/status", log, env=env):
        # without the token: the API refuses, the page asks for a login
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/contents", timeout=10)
        assert refused.value.code == 403
        chromium.get(f"{base}/lab/tree/{CHAPTER.name}")
        _wait(chromium, "return document.querySelector('input[type=password]')", 30, "the login page")
        assert "/login" in chromium.current_url
        chromium.save_screenshot(str(shots / "0-no-token.png"))

        chromium.get(f"{base}/lab/tree/{CHAPTER.name}?token={token}")
        opened_at = time.monotonic()
        _wait(chromium, "return document.querySelector('.jp-Notebook .jp-Cell')", 120, "the notebook")
        # the notebook toolbar's kernel name and execution indicator (the status bar's kernel item
        # is not shown in every JupyterLab layout)
        _wait(chromium, "return document.querySelector('.jp-KernelName')?.innerText.includes('Python 3 (ipykernel)')"
                        " && document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'",
              120, "an idle kernel")
        chromium.save_screenshot(str(shots / "1-opened.png"))
        _click_menu(chromium, "Run", "runmenu:run-all")  # Run > Run All Cells
        ran_at = time.perf_counter()
        # done: every code cell has an execution count and none is queued ([*])
        _wait(chromium, """const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
                           return p.length && p.every(t => /\\[\\d+\\]/.test(t));""", RUN_TIMEOUT_S, "all cells to run")
        run_s = time.perf_counter() - ran_at
        state = chromium.execute_script("""return {
            images: document.querySelectorAll('.jp-OutputArea-output img').length,
            outputs: document.querySelectorAll('.jp-OutputArea-output').length,
            errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]')].map(e => e.textContent),
            progress: document.querySelectorAll('.jp-OutputArea-output .widget-hprogress').length,
            progress_text: [...document.querySelectorAll('.jp-OutputArea-output .widget-html-content')].map(e => e.textContent),
            };""")
        chromium.save_screenshot(str(shots / "2-ran.png"))
        for name, selector in (("3-figure", ".jp-OutputArea-output img"), ("4-progress", ".widget-hprogress")):
            chromium.execute_script(f"document.querySelector('{selector}')?.scrollIntoView()")
            chromium.save_screenshot(str(shots / f"{name}.png"))
        # without the overrides the news prompt shows within ~10 s of opening JupyterLab
        time.sleep(max(0.0, NEWS_PROMPT_S - (time.monotonic() - opened_at)))
        state["news"] = chromium.execute_script("return document.body.innerText.includes('Jupyter news')")
    assert not state["errors"], state["errors"]
    assert state["images"] >= 1 and state["outputs"] >= 5, state
    assert state["progress"] == 1 and any("3/3" in t for t in state["progress_text"]), state
    assert not state["news"], "the news prompt must be off (configs/jupyterlab/overrides.json)"
    record = json.loads((tmp_path / "outputs" / "lab" / CHAPTER.stem / "metrics.json").read_text())
    assert record["metrics"] and record["figures"], "the chapter recorded into outputs/lab through dslib"
    assert "without encryption" not in log.read_text(), "kernels get CurveZMQ keys"
    print(f"JupyterLab: run all {run_s:.0f} s, whole test {time.perf_counter() - started:.0f} s; screenshots in {shots}")
