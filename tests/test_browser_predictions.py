"""PredictionView in a real browser: JupyterLab, Debian's Chromium, a live model server.

Uses the JupyterLab fixture and helpers of ``tests/test_browser.py``. Screenshots
go to ``artifacts/browser/prediction-view-*.png`` (gitignored) to look at.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.serving_helpers import serve
from tests.test_browser import (  # noqa: F401 (lab is a fixture)
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    Lab,
    _dismiss_news,
    _notebook,
    _run_all,
    lab,
)

pytestmark = [pytest.mark.browser, pytest.mark.tensorflow]


@pytest.mark.timeout(240)
def test_prediction_view_in_jupyterlab(
    lab: Lab,  # noqa: F811 (the fixture imported above)
    mnist_models: Path,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base = tmp_path / "model"
    shutil.copytree(mnist_models / "2", base / "2")
    server = serve(base, tmp_path / "server.log")
    cells = [
        "from kfnb.widgets import PredictionView",
        f'view = PredictionView("{server.url}", serve_command="%serve mnist --name mnist")\nview',
    ]
    notebook = lab.root / "predictions.ipynb"
    notebook.write_text(json.dumps(_notebook(cells), indent=1))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
            )
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda err: errors.append(str(err)))
            try:
                page.goto(
                    f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}&reset", timeout=60_000
                )
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
                )
                _dismiss_news(page)
                _run_all(page)
                view = page.locator(".kfnb-predictionview")
                expect(view).to_be_visible(timeout=60_000)
                tiles = view.locator(".kfnb-tile")
                expect(tiles).to_have_count(16, timeout=30_000)
                # Every digit image decoded (a broken data URI has naturalWidth 0).
                widths = tiles.locator("img").evaluate_all("els => els.map(e => e.naturalWidth)")
                assert widths == [28] * 16, widths
                # Frames are green when right, red when wrong, as the browser draws them.
                colours = tiles.evaluate_all(
                    "els => els.map(e => [e.classList.contains('kfnb-right'),"
                    " getComputedStyle(e).borderTopColor])"
                )
                assert {tuple(c) for c in colours} <= {
                    (True, "rgb(46, 125, 50)"),
                    (False, "rgb(198, 40, 40)"),
                }, colours
                assert {right for right, _ in colours} == {True, False}  # both kinds shown
                expect(view.locator(".kfnb-header")).to_contain_text(
                    re.compile(r"mnist version 2 .*accuracy \d+\.\d% \(\d+ of 16 digits\)")
                )
                view.scroll_into_view_if_needed()
                _dismiss_news(page)
                view.screenshot(path=str(SCREENSHOTS / "prediction-view-1-batch.png"))

                view.get_by_role("button", name="Only mistakes").click()
                expect(view.locator(".kfnb-tile.kfnb-right")).to_have_count(0, timeout=30_000)
                expect(view.locator(".kfnb-tile.kfnb-wrong")).to_have_count(16)
                view.screenshot(path=str(SCREENSHOTS / "prediction-view-2-mistakes.png"))

                server.stop()  # the server goes away: the view says so on the next click
                view.get_by_role("button", name="Next batch").click()
                expect(view.locator(".kfnb-error")).to_have_text(
                    f"model server at {server.url} is not answering: restart it with "
                    "%serve mnist --name mnist",
                    timeout=30_000,
                )
                view.screenshot(path=str(SCREENSHOTS / "prediction-view-3-server-gone.png"))
            except Exception:
                page.screenshot(path=str(SCREENSHOTS / "prediction-view-failure.png"))
                raise
            finally:
                browser.close()
    finally:
        server.stop()
    assert not errors, errors
