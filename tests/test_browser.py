"""JupyterLab in headless Chromium: the demo notebook runs and every matrix is typeset by MathJax.

Needs /usr/bin/chromium and Python Playwright; skips without them locally, fails in CI (CI=true).
"""
from __future__ import annotations

import os

import nbformat
import pytest

from jupyter_harness import (
    NOTEBOOK_DIR, ROOT, LabServer, chromium_missing, launch_chromium, magic_cells,
    run_notebook_in_lab,
)

pytestmark = pytest.mark.browser

NOTEBOOK = NOTEBOOK_DIR / "01_backward_gradient.ipynb"
SCREENSHOT = ROOT / "artifacts" / "jupyterlab-01_backward_gradient.png"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the notebook, stopped in teardown whatever happens."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    with LabServer(tmp_path_factory.mktemp("lab"), [NOTEBOOK]) as server:
        yield server


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


def test_notebook_renders_in_jupyterlab(lab, page):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    magic = magic_cells(nb)
    try:
        run_notebook_in_lab(page, lab, nb, NOTEBOOK.name)
    finally:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

    errors = page.locator(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    assert not errors, f"error outputs: {errors}"
    merrors = page.locator("mjx-merror").evaluate_all("ns => ns.map(n => n.title)")
    assert not merrors, f"MathJax errors: {merrors}"
    # An undefined macro is no merror: MathJax prints its name in red instead.
    undefined = page.locator('mjx-assistive-mml mtext[mathcolor="red"]').all_text_contents()
    assert not undefined, f"undefined LaTeX macros: {undefined}"
    raw = page.locator(".jp-Notebook .jp-RenderedLatex").filter(has_text="$$").count()
    assert raw == 0, "LaTeX left untypeset ($$ showing)"

    cells = page.locator(".jp-Notebook .jp-Cell")
    assert cells.count() == len(nb.cells)
    for i in magic:
        typeset = cells.nth(i).locator(".jp-OutputArea-output mjx-container")
        assert typeset.count() >= 1, f"no typeset output beneath cell {i}:\n{nb.cells[i].source}"
