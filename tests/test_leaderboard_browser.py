"""The leaderboard page of a finished suite, opened in headless Chromium.

Checks what a reader would see, independent of the page's layout: no console errors, every
image decoded, tables and the dataset's heading present; a screenshot is kept beside the page
(``results/leaderboard/screenshot.png``). Uses Debian's ``chromium`` and ``chromium-driver``
(``.ci/run`` installs them) through selenium, with the driver's path given explicitly so that
selenium-manager never downloads one. Skipped only when Chromium is missing or cannot start.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mtlbench.harness.cli import app
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import CliRunner

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_LOAD_SECONDS = 20

# the tiny suite of tests/test_end_to_end.py at half its budget (29 steps a run): one dataset,
# the single-task reference and EW, two seeds (so that spreads and intervals have values)
SUITE = {
    "name": "tiny-browser",
    "datasets": [
        {"name": "multidigits", "params": {"train_pairs": 512, "val_pairs": 128, "test_pairs": 256}}
    ],
    "methods": [{"name": "single_task"}, {"name": "ew"}],
    "seeds": [0, 1],
    "budget": {"flops": 1.5e9},
    "training": {"batch_size": 64, "log_every": 5, "eval_every": 10, "checkpoint_every": 20},
}


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"Chromium not installed ({', '.join(missing)} missing): "
            "apt install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1024")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
    except WebDriverException as error:
        pytest.skip(f"Chromium could not start: {error.msg or error}".splitlines()[0])
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser_suite")
    suite = folder / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    results = folder / "results"
    # one intra-op thread: on a busy 2-core machine torch's default two threads spin and make
    # this fixture several times slower; what is tested here is the page, not training speed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = CliRunner().invoke(
            app, ["run", str(suite), "--results-dir", str(results), "--no-progress"]
        )
    finally:
        torch.set_num_threads(threads)
    assert outcome.exit_code == 0, outcome.output
    page = results / "leaderboard" / "index.html"
    assert page.is_file()
    return page


def _open(driver: webdriver.Chrome, page: Path) -> list[dict[str, Any]]:
    """Load ``page`` and return the console entries it produced (the log is read and cleared)."""
    driver.get_log("browser")  # drop entries left by a previous page
    driver.get(page.as_uri())
    WebDriverWait(driver, PAGE_LOAD_SECONDS).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    return driver.get_log("browser")


def _problems(driver: webdriver.Chrome, console: list[dict[str, Any]]) -> list[str]:
    """Console errors (SEVERE) and images that did not decode, as readable lines."""
    problems = [f"console: {e['message']}" for e in console if e["level"] == "SEVERE"]
    images = driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src') || '', "
        "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))"
    )
    problems += [
        f"image not loaded: {i['src'][:60]} ({i['width']}x{i['height']})"
        for i in images
        if not (i["complete"] and i["width"] > 0 and i["height"] > 0)
    ]
    return problems


def test_the_checks_catch_a_broken_page(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """The oracle's own test: a page with a missing image and a console error must fail it."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><img src='missing.png'>"
        "<script>console.error('deliberate')</script></body></html>"
    )
    problems = _problems(browser, _open(browser, page))
    assert any("deliberate" in p for p in problems), problems
    assert any(p.startswith("image not loaded: missing.png") for p in problems), problems


def test_leaderboard_page_renders_in_chromium(browser: webdriver.Chrome, leaderboard: Path) -> None:
    console = _open(browser, leaderboard)
    assert _problems(browser, console) == []
    assert browser.execute_script("return document.images.length") >= 1  # the fronts' plot
    assert browser.execute_script("return document.querySelectorAll('table').length") >= 1
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('h1, h2, h3, h4'), h => h.textContent)"
    )
    assert any("multidigits" in h for h in headings), headings
    # the whole page (not only the window) in one screenshot, kept beside the page
    capture = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    screenshot = leaderboard.parent / "screenshot.png"
    screenshot.write_bytes(base64.b64decode(capture["data"]))
    page_height = browser.execute_script("return document.documentElement.scrollHeight")
    with Image.open(screenshot) as image:
        assert image.height >= min(page_height, 16000) - 1, (image.size, page_height)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 16, "blank screenshot"
