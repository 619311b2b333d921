"""Write ``docs/screenshot.png``: one ``%%vjp`` cell of the first demo notebook, as JupyterLab
renders it, cropped to the cell. Uses the browser test's harness (``tests/jupyter_harness.py``).

    python docs/make_screenshot.py [--cell SOURCE-SNIPPET] [--out PATH]

Needs /usr/bin/chromium and Python Playwright (``pip install -e ".[test]"``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import nbformat  # noqa: E402
from jupyter_harness import (  # noqa: E402
    NOTEBOOK_DIR, LabServer, chromium_missing, launch_chromium, run_notebook_in_lab,
)

NOTEBOOK = NOTEBOOK_DIR / "01_backward_gradient.ipynb"
# The tutorial's f(x) = (-x^3, 5x) at x = 0, 1, 2: two gradient arguments, a 2 x 3 result.
DEFAULT_CELL = "x = torch.arange(3, dtype=float, requires_grad=True)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default=DEFAULT_CELL, help="text of the cell to capture")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    if missing := chromium_missing():
        sys.exit(f"cannot take the screenshot: {missing}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    matches = [i for i, c in enumerate(nb.cells) if args.cell in c.source]
    if len(matches) != 1:
        sys.exit(f"{len(matches)} cells of {NOTEBOOK.name} contain {args.cell!r}; need one")

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, LabServer(Path(tmp), [NOTEBOOK]) as lab, \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1200},
                                    device_scale_factor=2)
            run_notebook_in_lab(page, lab, nb, NOTEBOOK.name)
            page.keyboard.press("Control+b")  # fold the file browser away
            cell = page.locator(".jp-Notebook .jp-Cell").nth(matches[0])
            cell.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            cell.screenshot(path=str(args.out))
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
