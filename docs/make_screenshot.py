"""Write the README's pictures: one ``%%vjp`` cell of the first demo notebook as JupyterLab shows
it and as VS Code's notebook renderer shows it, side by side.

    python docs/make_screenshot.py [--cell SOURCE-SNIPPET] [--out PATH]

writes ``docs/screenshot-jupyterlab.png``, ``docs/screenshot-vscode.png`` and both side by side
in ``docs/screenshot.png`` (``--out``). The notebook is executed by nbclient; JupyterLab opens it
as saved (``tests/jupyter_harness.py``); the VS Code picture is the output VS Code would pick (it
prefers text/latex to text/markdown when both are there) rendered by markdown-it +
@vscode/markdown-it-katex under node with katex.css and VS Code's light-theme look
(``tests/clients/vscode_render.js --page``).

Needs /usr/bin/chromium, Python Playwright (``pip install -e ".[test]"``), node and
``npm ci --prefix tests/clients``.
"""
from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import nbformat  # noqa: E402
from jupyter_harness import (  # noqa: E402
    CELLS, NOTEBOOK_DIR, LabServer, chromium_missing, display_outputs, execute_notebook,
    launch_chromium, node_missing, open_notebook_in_lab, render_vscode,
)

NOTEBOOK = NOTEBOOK_DIR / "01_backward_gradient.ipynb"
# The tutorial's f(x) = (-x^3, 5x) at x = 0, 1, 2: two gradient arguments, a 2 x 3 result.
DEFAULT_CELL = "x = torch.arange(3, dtype=float, requires_grad=True)"
VSCODE_ORDER = ("text/latex", "text/markdown")  # VS Code's preference among what we emit
WIDTH = 760  # CSS px of each picture: about a laptop's notebook column


def jupyterlab_picture(nb, index: int, out: Path, playwright) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / NOTEBOOK.name
        nbformat.write(nb, saved)
        with LabServer(Path(tmp) / "lab", [saved]) as lab:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page(viewport={"width": WIDTH + 60, "height": 1400},
                                        device_scale_factor=2)
                rich = sum(any(m in d for m in VSCODE_ORDER) for *_, d in display_outputs(nb))
                open_notebook_in_lab(page, lab, NOTEBOOK.name, rich)
                page.keyboard.press("Control+b")  # fold the file browser away
                page.wait_for_timeout(800)
                cell = page.locator(CELLS).nth(index)
                cell.scroll_into_view_if_needed()
                page.wait_for_timeout(300)
                cell.screenshot(path=str(out))
            finally:
                browser.close()


def vscode_picture(nb, index: int, out: Path, playwright) -> None:
    cell = nb.cells[index]
    data = next(d for i, _, d in display_outputs(nb) if i == index)
    mime = next(m for m in VSCODE_ORDER if m in data)
    page_html = render_vscode([{"text": data[mime], "input": cell.source}], page_title="VS Code")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "vscode.html"
        html.write_text(page_html, encoding="utf-8")
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1400},
                                    device_scale_factor=2)
            page.goto(html.as_uri())
            page.wait_for_timeout(500)
            page.locator(".cell").first.screenshot(path=str(out))
        finally:
            browser.close()


def side_by_side(left: Path, right: Path, out: Path, playwright) -> None:
    def img(path: Path, caption: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return (f'<figure style="margin:0"><img src="data:image/png;base64,{data}" '
                f'style="width:{WIDTH}px">'
                f"<figcaption>{caption}</figcaption></figure>")

    html = ("<html><body style='margin:0;background:#fff;font:14px sans-serif;color:#555'>"
            "<div id='both' style='display:flex;gap:24px;align-items:flex-start;padding:12px'>"
            + img(left, "JupyterLab") + img(right, "VS Code (markdown-it + KaTeX)")
            + "</div></body></html>")
    browser = launch_chromium(playwright)
    try:
        page = browser.new_page(viewport={"width": 2 * WIDTH + 120, "height": 1200},
                                device_scale_factor=2)
        page.set_content(html)
        page.locator("#both").screenshot(path=str(out))
    finally:
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default=DEFAULT_CELL, help="text of the cell to capture")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    if missing := chromium_missing() or node_missing():
        sys.exit(f"cannot take the screenshots: {missing}")
    nb, _ = execute_notebook(NOTEBOOK)
    matches = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and args.cell in c.source]
    if len(matches) != 1:
        sys.exit(f"{len(matches)} cells of {NOTEBOOK.name} contain {args.cell!r}; need one")

    from playwright.sync_api import sync_playwright

    lab_png = args.out.with_name(args.out.stem + "-jupyterlab.png")
    vscode_png = args.out.with_name(args.out.stem + "-vscode.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        jupyterlab_picture(nb, matches[0], lab_png, playwright)
        vscode_picture(nb, matches[0], vscode_png, playwright)
        side_by_side(lab_png, vscode_png, args.out, playwright)
    for path in (lab_png, vscode_png, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
