"""Real Jupyter and real notebook clients for the notebook, client and browser tests (and
``docs/make_screenshot.py``).

* :func:`isolated_jupyter_env` — a private Jupyter config/data/runtime tree whose only
  ``python3`` kernelspec runs *this* interpreter (``sys.executable``), so kernels import the
  package under test and nothing leaks into or out of the user's own Jupyter setup;
* :func:`execute_notebook` / :func:`executed_notebook_files` — each client notebook (the demo
  notebooks and ``tests/clients/cells.ipynb``) run once per test session by nbclient in such a
  kernel, its outputs shared by every client check;
* :class:`LabServer` — ``jupyter lab`` on 127.0.0.1, a free port, a token; always stopped;
* :func:`launch_chromium` / :func:`run_notebook_in_lab` / :func:`open_notebook_in_lab` — headless
  Chromium through Playwright opening a notebook (running all cells, or showing the outputs it
  was saved with); :func:`wait_rendered` waits for what the checks read (every output written
  by its renderer, typeset by MathJax, pictures and fonts loaded), :func:`set_viewport` for the
  layout to come to rest at a new size, never a fixed delay; :func:`lab_layout` measures every
  output against its output area, :func:`output_boxes` gives each output's box;
* :func:`render_vscode` — VS Code's notebook renderer (markdown-it + @vscode/markdown-it-katex)
  under node, from ``tests/clients/node_modules``;
* :class:`StaticServer` — a local HTTP server (MathJax 2.7 from npm, exported HTML) so that the
  nbconvert export is rendered with nothing fetched from the network.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "demo_notebooks"
CLIENTS_DIR = ROOT / "tests" / "clients"
CHECK_NOTEBOOK = CLIENTS_DIR / "cells.ipynb"  # a dozen cells of our own for every client
NODE_MODULES = CLIENTS_DIR / "node_modules"  # `npm ci --prefix tests/clients` (.ci/run)
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# JupyterLab user settings: no news/update toasts over the page, every cell attached to the DOM
# (no windowing), so that each output is rendered and typeset whether scrolled into view or not.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def demo_notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def client_notebooks() -> list[Path]:
    """Every notebook the client checks render: the demo notebooks and the check notebook."""
    return [*demo_notebooks(), CHECK_NOTEBOOK]


def magic_cells(nb) -> list[int]:
    """Indices (among all cells) of the code cells that run ``%%vjp``, ``%jacobian`` or
    ``%hessian``."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and (c.source.lstrip().startswith("%%vjp") or "%jacobian" in c.source
                 or "%hessian" in c.source)]


def isolated_jupyter_env(base: Path) -> dict[str, str]:
    """Create a private Jupyter tree under ``base``; return the environment variables using it."""
    kernel_dir = base / "data" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vjp_magic tests)",
        "language": "python",
    }))
    for sub in ("config", "runtime", "ipython"):
        (base / sub).mkdir(exist_ok=True)
    return {
        "JUPYTER_PATH": str(base / "data"),  # searched first: our python3 wins
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "IPYTHONDIR": str(base / "ipython"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter_environ(base: Path):
    """Point this process's Jupyter at a private tree under ``base`` for the ``with`` block."""
    saved = dict(os.environ)
    os.environ.update(isolated_jupyter_env(base))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


_PROBE = "import sys; print(sys.executable, end='')"


@functools.lru_cache(maxsize=None)
def _execute(path: Path):
    import nbformat
    from nbclient import NotebookClient

    base = Path(tempfile.mkdtemp(prefix="vjp-nbclient-"))
    workdir = base / "work"
    workdir.mkdir()
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    started = time.monotonic()
    with jupyter_environ(base / "jupyter"):
        client = NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=True,
                                resources={"metadata": {"path": str(workdir)}})
        client.execute()
    nb.metadata.setdefault("vjp_magic_tests", {})["execute_s"] = time.monotonic() - started
    probe = nb.cells.pop(0)
    shutil.rmtree(base, ignore_errors=True)
    return nb, "".join(o.get("text", "") for o in probe.outputs)


def execute_notebook(path: Path):
    """``(nb, kernel_python)``: the notebook at ``path`` run top to bottom by nbclient in a real
    ipykernel of this interpreter, errors kept as outputs (``allow_errors``). Run once per
    session; each caller gets its own copy."""
    nb, kernel_python = _execute(Path(path).resolve())
    return copy.deepcopy(nb), kernel_python


@functools.lru_cache(maxsize=None)
def executed_notebook_files() -> dict[str, Path]:
    """Each client notebook, executed, saved as ``artifacts/executed/<name>``: name → path."""
    import nbformat

    folder = ARTIFACTS / "executed"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in client_notebooks():
        nb, _ = execute_notebook(path)
        files[path.name] = folder / path.name
        nbformat.write(nb, files[path.name])
    return files


def display_outputs(nb) -> list[tuple[int, int, dict]]:
    """``(cell index, output index, data)`` of every rich output (execute_result/display_data)."""
    return [(i, k, out["data"]) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for k, out in enumerate(cell.outputs)
            if out.output_type in ("execute_result", "display_data")]


_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)[ \t]*python[^\n]*\n(?P<body>.*?)"
                    r"^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)


def python_fences(markdown: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a markdown text (the copyable code)."""
    return [m.group("body") for m in _FENCE.finditer(markdown)]


_MATHTT = re.compile(r"(?P<lone>\$\s*)?\\(?:mathtt|texttt)\{(?P<body>[^{}]*(?:\{[^{}]*\}[^{}]*)*)\}"
                     r"(?(lone)\s*\$|)")


def code_as_maths(text: str) -> list[str]:
    """Code typeset as maths, which a reader cannot copy (MathJax/KaTeX give whitespace or
    symbols): a typewriter name standing alone as inline maths in prose (write it as `code`),
    or typewriter maths holding a line of code (spaces, calls, assignments)."""
    found = []
    for m in _MATHTT.finditer(text):
        body = m.group("body")
        if m.group("lone") or re.search(r"[(=]|\\phantom|\\ |\s", body):
            found.append(m.group(0)[:80])
    return found


class LabServer:
    """``jupyter lab`` serving copies of ``notebooks`` from a temporary root; a context manager.

    The server is stopped on exit whatever happened (terminate, then kill).
    """

    def __init__(self, base: Path, notebooks: list[Path], startup_timeout: float = 90):
        self.base = Path(base)
        self.root = self.base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        for notebook in notebooks:
            shutil.copy(notebook, self.root / notebook.name)
        self.env = {**os.environ, **isolated_jupyter_env(self.base / "jupyter")}
        settings = self.base / "jupyter" / "lab-user-settings"
        for relative, values in LAB_SETTINGS.items():
            path = settings / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.log_path = self.base / "jupyter-lab.log"
        self.command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.base / 'jupyter' / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self.process: subprocess.Popen | None = None

    def notebook_url(self, name: str) -> str:
        """The notebook in a fresh workspace (``reset``: no tabs left from an earlier page)."""
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"

    def __enter__(self) -> "LabServer":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        probe = f"{self.url}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.process.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"jupyter lab did not answer in {self.startup_timeout}s:\n{self.log()}")

    def wait_for_kernel(self, path: str, timeout_s: float) -> None:
        """Wait until the notebook at ``path`` has a session whose kernel is idle."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/api/sessions?token={self.token}") as answer:
                sessions = json.load(answer)
            if any(s["path"] == path and s["kernel"]["execution_state"] == "idle"
                   for s in sessions):
                return
            time.sleep(0.3)
        raise TimeoutError(f"no idle kernel for {path} after {timeout_s}s:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the server (its kernels go with it); kill it if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (pip install -e '.[test]')"
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


def launch_chromium(playwright):
    """Headless Debian Chromium (Playwright's own browser downloads are not used)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


@contextlib.contextmanager
def chromium_browser():
    """A launched headless Chromium for the block, closed afterwards whatever happens."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def block_network(page) -> None:
    """Let the page reach 127.0.0.1 only (no CDN, no fonts from the web): offline for real."""
    def route(r):
        host = urllib.parse.urlsplit(r.request.url).hostname
        local = host in ("127.0.0.1", "localhost")
        if local or r.request.url.startswith(("data:", "blob:", "file:")):
            r.continue_()
        else:
            r.abort()
    page.route("**/*", route)


# The notebook in the current tab (other tabs' notebooks stay in the DOM, hidden).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
CELLS = NOTEBOOK + " .jp-Cell"
SCROLLER = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer"  # what scrolls
# A rich output: what JupyterLab's markdown or LaTeX renderer made of a display.
_RICH_IN_CELL = ".jp-OutputArea-output.jp-RenderedMarkdown, .jp-OutputArea-output.jp-RenderedLatex"
_FAILED = f'{NOTEBOOK} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
# Text that MathJax has not (yet) typeset: delimiters or TeX macros outside code and maths.
_RAW_TEX_JS = r"""
const rawTex = (root) => {
    const found = [];
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest('mjx-container, code, pre, script, style')) {
            continue;
        }
        if (/\$|\\[a-zA-Z]+|\\[\[\]()]/.test(node.textContent)) {
            found.push(node.textContent.trim().slice(0, 120));
        }
    }
    return found;
};
"""
# The kernel is idle and every code cell shows an execution count ("[12]:", not "[*]:" or
# "[ ]:"), or it is idle after an error output (which cancels the cells queued after it).
_ALL_EXECUTED = """(codeCells) => {
    const prompts = [...document.querySelectorAll('%s .jp-CodeCell .jp-InputPrompt')];
    const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const idle = !status || status.getAttribute('data-status') === 'idle';
    const failed = document.querySelector('%s');
    return idle && (failed || (prompts.length === codeCells
        && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))));
}""" % (NOTEBOOK, _FAILED)


# Where each output of the open notebook stands, for the waits below: which cell it belongs to,
# whether the markdown renderer has written it (JupyterLab 4 inserts an empty node per output and
# fills it in one go once `marked` has parsed the text, which it does only after CodeMirror has
# highlighted every code block: an empty node is an output still being rendered), TeX that MathJax
# has not typeset yet (JupyterLab's MathJax 3 has no global promise: it typesets each output
# synchronously once its MathDocument is loaded, so raw TeX left is typesetting not yet done),
# pictures not decoded, and whether the web fonts (MathJax's among them) have loaded.
_RENDER_STATE = "(want) => {" + _RAW_TEX_JS + f"""
    const cells = [...document.querySelectorAll('{CELLS}')];
    const cellOf = (n) => cells.findIndex(c => c.contains(n));
    const outputs = [...document.querySelectorAll('{NOTEBOOK} .jp-OutputArea-output')];
    const rich = outputs.filter(n => n.matches('{_RICH_IN_CELL}'));
    const pictures = [...document.querySelectorAll('{NOTEBOOK} .jp-RenderedImage img')];
    const state = {{
        outputs: outputs.length, rich: rich.length,
        failed: document.querySelector('{_FAILED}') !== null,
        empty: rich.filter(n => !n.hasChildNodes()).map(cellOf),
        untypeset: rich.filter(n => rawTex(n).length).map(n => [cellOf(n), rawTex(n)[0]]),
        loading: pictures.filter(img => !img.complete).map(cellOf),
        fonts: document.fonts.status,
    }};
    const stop = want.stopAtError && state.failed;
    state.done = (stop || ((want.outputs === null || state.outputs === want.outputs)
                           && state.rich >= want.rich))
        && !state.empty.length && !state.untypeset.length && !state.loading.length
        && state.fonts === 'loaded';
    return state;
}}"""


def _not_rendered(state: dict, want: dict) -> str:
    """What never happened, from a ``_RENDER_STATE``."""
    missing = []
    if want["outputs"] is not None and state["outputs"] != want["outputs"]:
        missing.append(f"{state['outputs']} of the notebook's {want['outputs']} outputs shown")
    if state["rich"] < want["rich"]:
        missing.append(f"{state['rich']} of {want['rich']} markdown/LaTeX outputs shown")
    if state["empty"]:
        missing.append(f"the markdown renderer never wrote the output of cells {state['empty']}")
    if state["untypeset"]:
        missing.append(f"MathJax never typeset {state['untypeset'][:3]} (cell, text)")
    if state["loading"]:
        missing.append(f"the pictures of cells {state['loading']} never loaded")
    if state["fonts"] != "loaded":
        missing.append(f"the web fonts never loaded (document.fonts.status {state['fonts']!r})")
    return "; ".join(missing) or "nothing missing at the last look"


def wait_rendered(page, rich: int, outputs: int | None = None, stop_at_error: bool = False,
                  timeout_s: float = 90) -> None:
    """Wait until the open notebook shows ``outputs`` outputs (None: any number) of which at
    least ``rich`` are markdown/LaTeX, each written by its renderer and typeset by MathJax, every
    picture decoded and every web font loaded. ``stop_at_error``: an error output (which cancels
    the cells queued after it) ends the wait for the counts. Raises AssertionError saying what
    never happened within ``timeout_s``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    want = {"rich": rich, "outputs": outputs, "stopAtError": stop_at_error}
    try:
        page.wait_for_function(f"(want) => ({_RENDER_STATE})(want).done", arg=want,
                               timeout=timeout_s * 1000, polling=100)
    except PlaywrightTimeout:
        state = page.evaluate(_RENDER_STATE, want)
        raise AssertionError(f"after {timeout_s:g} s: {_not_rendered(state, want)}") from None


def shown_outputs(nb) -> int:
    """How many outputs JupyterLab shows for ``nb`` as saved: one per output, except that its
    output model merges consecutive stream outputs of one name (stdout, stderr) in a cell."""
    count = 0
    for cell in nb.cells:
        last_stream = None
        for out in cell.get("outputs", []):
            stream = out.get("name") if out["output_type"] == "stream" else None
            count += stream is None or stream != last_stream
            last_stream = stream
    return count


# The page's layout at rest after a change of viewport: the window has the size asked for, the
# fonts have loaded, and the notebook's size and every output's box have stayed the same for
# ``frames`` animation frames in a row (Lumino lays the shell out again in the frames after a
# resize event; nothing is typeset again).
_SETTLED = f"""(want) => {{
    const s = document.querySelector('{SCROLLER}') || document.querySelector('{NOTEBOOK}');
    const boxes = [...document.querySelectorAll('{NOTEBOOK} .jp-OutputArea-output')]
        .map(n => {{ const r = n.getBoundingClientRect(); return [r.left, r.width, r.height]; }});
    const sig = JSON.stringify([innerWidth, innerHeight, boxes,
        s && [s.clientWidth, s.clientHeight, s.scrollWidth, s.scrollHeight]]);
    const last = window.__vjpSettle || {{sig: null, same: 0}};
    window.__vjpSettle = {{sig, same: last.sig === sig ? last.same + 1 : 0}};
    return innerWidth === want.width && innerHeight === want.height
        && document.fonts.status === 'loaded' && window.__vjpSettle.same >= want.frames;
}}"""


def wait_settled(page, frames: int = 4, timeout_s: float = 30) -> None:
    """Wait until the page's layout is at rest at its viewport's size (see ``_SETTLED``)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    size = page.viewport_size
    page.evaluate("() => { delete window.__vjpSettle; }")
    try:
        page.wait_for_function(_SETTLED, arg={**size, "frames": frames},
                               timeout=timeout_s * 1000, polling="raf")
    except PlaywrightTimeout:
        now = page.evaluate("() => [innerWidth, innerHeight, document.fonts.status]")
        raise AssertionError(f"the layout never came to rest at {size['width']}x{size['height']} "
                             f"within {timeout_s:g} s (window, fonts: {now})") from None


def set_viewport(page, viewport: dict) -> None:
    """Resize the page to ``viewport`` and wait until its layout is at rest there."""
    page.set_viewport_size(viewport)
    wait_settled(page)


def run_notebook_in_lab(page, server: LabServer, nb, name: str, timeout_s: float = 90,
                        outputs: int | None = None) -> None:
    """Open notebook ``name`` (content ``nb``) in JupyterLab, run all cells from the Run menu,
    and wait until the kernel is idle with every cell run, and every magic's output (``outputs``
    outputs in all, when given) is rendered and typeset: see :func:`wait_rendered`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    timeout = timeout_s * 1000
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    page.goto(server.notebook_url(name), timeout=timeout)
    page.locator(CELLS).first.wait_for(timeout=timeout)
    # Before the kernel has started the indicator already reads "idle", and "Run All" would ask
    # which kernel to start: wait until the server has the session's kernel up, then the page.
    server.wait_for_kernel(name, timeout_s)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        state="attached", timeout=timeout)
    menu_bar = page.locator("#jp-MainMenu .lm-MenuBar-itemLabel")
    menu_bar.filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
    try:
        page.wait_for_function(_ALL_EXECUTED, arg=code_cells, timeout=timeout, polling=250)
    except PlaywrightTimeout:
        raise AssertionError(f"after {timeout_s:g} s the kernel was not idle with all "
                             f"{code_cells} code cells run") from None
    wait_rendered(page, len(magic_cells(nb)), outputs, stop_at_error=True, timeout_s=timeout_s)


def open_notebook_in_lab(page, server: LabServer, name: str, rich_outputs: int,
                         timeout_s: float = 90, outputs: int | None = None) -> None:
    """Open notebook ``name`` as saved (executed elsewhere: nothing runs) and wait until its
    ``rich_outputs`` markdown/LaTeX outputs (and ``outputs`` outputs in all, when given: see
    :func:`shown_outputs`) are rendered and typeset: see :func:`wait_rendered`."""
    page.goto(server.notebook_url(name), timeout=timeout_s * 1000)
    page.locator(CELLS).first.wait_for(timeout=timeout_s * 1000)
    wait_rendered(page, rich_outputs, outputs, timeout_s=timeout_s)


def file_browser_visible(page, timeout_s: float = 10) -> bool:
    """Whether JupyterLab's file browser is shown (waiting up to ``timeout_s`` for it)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(".jp-FileBrowser").first.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        return False
    return True


# Every rich output measured against its output area (and the cell), what MathJax flagged,
# what is left untypeset, and the text of its <pre> blocks; the notebook's own h-scroll.
_LAYOUT = "() => {" + _RAW_TEX_JS + f"""
    const describe = (el) => el.tagName.toLowerCase() + (el.getAttribute('class')
        ? '.' + el.getAttribute('class').trim().split(/\\s+/).slice(0, 2).join('.') : '');
    const cells = [...document.querySelectorAll('{CELLS}')];
    const outputs = [];
    cells.forEach((cell, index) => {{
        for (const area of cell.querySelectorAll('{_RICH_IN_CELL}')) {{
            const box = area.getBoundingClientRect();
            const limit = Math.min(box.right, cell.getBoundingClientRect().right);
            let worst = null;
            for (const el of area.querySelectorAll('*')) {{
                if (el.closest('mjx-assistive-mml')) continue;  // clipped screen-reader copy
                const r = el.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) continue;
                const over = r.right - limit;
                if (over > 1 && (!worst || over > worst.over)) {{
                    worst = {{over: Math.round(over), element: describe(el),
                              text: el.textContent.trim().slice(0, 80)}};
                }}
            }}
            // What scrolls or clips sideways; inside a formula only the formula's own container
            // counts (MathJax's inner boxes overlap by a pixel or two by design).
            const scrolling = [area, ...area.querySelectorAll('*')]
                .filter(el => el.tagName === 'MJX-CONTAINER' || !el.closest('mjx-container'))
                .filter(el => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
                .map(el => describe(el) + ` ${{el.scrollWidth}}>${{el.clientWidth}}`);
            outputs.push({{
                cell: index, mime: area.getAttribute('data-mime-type'),
                width: Math.round(box.width), height: Math.round(box.height),
                overflow: worst, scrolling,
                merrors: [...area.querySelectorAll('mjx-merror')]
                    .map(n => n.getAttribute('data-mjx-error') || n.textContent),
                undefined: [...area.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')]
                    .map(n => n.textContent),
                raw: rawTex(area),
                pre: [...area.querySelectorAll('pre')].map(n => n.textContent),
                code_elements: area.querySelectorAll('code, pre').length,
            }});
        }}
    }});
    const scroller = document.querySelector('{SCROLLER}') || document.querySelector('{NOTEBOOK}');
    return {{
        outputs,
        notebook: scroller ? {{scrollWidth: scroller.scrollWidth, clientWidth: scroller.clientWidth,
                              clientHeight: scroller.clientHeight,
                              scrollHeight: scroller.scrollHeight}} : null,
        errors: [...document.querySelectorAll('{_FAILED}')].map(n => n.innerText.slice(0, 500)),
    }};
}}"""


# Every image output (a picture of a Jacobian's pattern): its cell, its natural and shown size,
# and how far it sticks out past its output area.
_IMAGES = "() => {" + f"""
    const cells = [...document.querySelectorAll('{CELLS}')];
    const images = [];
    cells.forEach((cell, index) => {{
        for (const img of cell.querySelectorAll('.jp-OutputArea-output.jp-RenderedImage img')) {{
            const area = img.closest('.jp-OutputArea-output').getBoundingClientRect();
            const box = img.getBoundingClientRect();
            images.push({{cell: index, natural: img.naturalWidth, shown: Math.round(box.width),
                          height: Math.round(box.height),
                          loaded: img.complete && img.naturalWidth > 0,
                          over: Math.round(box.right - Math.min(area.right,
                                cell.getBoundingClientRect().right))}});
        }}
    }});
    return images;
}}"""


def lab_images(page) -> list[dict]:
    """Measure the open notebook's image outputs: see ``_IMAGES``."""
    return page.evaluate(_IMAGES)


def lab_layout(page) -> dict:
    """Measure the open notebook: see ``_LAYOUT``."""
    return page.evaluate(_LAYOUT)


# Every output of the open notebook as drawn (markdown, LaTeX, text, picture, error): its cell,
# its place among the outputs the cell shows, its mime type, whether it is a markdown/LaTeX
# output (those ``_LAYOUT`` measures), and its box in CSS px.
_BOXES = f"""() => {{
    const boxes = [];
    document.querySelectorAll('{CELLS}').forEach((cell, index) => {{
        cell.querySelectorAll('.jp-OutputArea-output').forEach((out, k) => {{
            const r = out.getBoundingClientRect();
            boxes.push({{cell: index, output: k, mime: out.getAttribute('data-mime-type'),
                         rich: out.matches('{_RICH_IN_CELL}'),
                         left: Math.round(r.left), top: Math.round(r.top),
                         width: Math.round(r.width), height: Math.round(r.height)}});
        }});
    }});
    return boxes;
}}"""


def output_boxes(page) -> list[dict]:
    """Each output's box in the open notebook: see ``_BOXES``."""
    return page.evaluate(_BOXES)


def notebook_screenshot(page, path: Path, cells: dict[int, Path] | None = None,
                        max_height: int = 16000) -> None:
    """One picture of the whole notebook at the page's width, and of each cell in ``cells``
    (index → path): the viewport made as tall as the notebook for the shots (every cell is
    attached, so nothing re-renders), then put back."""
    size = page.viewport_size
    extra = page.evaluate("""() => {
        const s = document.querySelector('%s');
        return s ? s.scrollHeight - s.clientHeight : 0;
    }""" % SCROLLER)
    tall = min(size["height"] + max(extra, 0) + 40, max_height)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        set_viewport(page, {"width": size["width"], "height": tall})
        page.screenshot(path=str(path))
        for index, cell_path in (cells or {}).items():
            page.locator(CELLS).nth(index).screenshot(path=str(cell_path))
    finally:
        page.set_viewport_size(size)
    wait_settled(page)


def node_missing() -> str | None:
    """Why the node-based client checks cannot run here, or None when they can."""
    if shutil.which("node") is None:
        return "node not found (apt-get install nodejs npm)"
    for package in ("markdown-it", "@vscode/markdown-it-katex", "katex", "mathjax"):
        if not (NODE_MODULES / package / "package.json").exists():
            return f"{package} not in {NODE_MODULES} (npm ci --prefix tests/clients)"
    return None


def render_vscode(texts: list[str], page_title: str | None = None):
    """VS Code's rendering (``tests/clients/vscode_render.js``) of each markdown text:
    ``[{"html", "errors", "warnings"}]``; with ``page_title``, one HTML page of them all
    (items may then be ``{"text", "input"}`` dicts: an input cell drawn above its output)."""
    command = ["node", str(CLIENTS_DIR / "vscode_render.js")]
    if page_title is not None:
        command += ["--page", page_title]
    done = subprocess.run(command, input=json.dumps(texts), capture_output=True, text=True,
                          cwd=CLIENTS_DIR, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vscode_render.js failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout if page_title is not None else json.loads(done.stdout)


class StaticServer:
    """Serve folders over HTTP on 127.0.0.1 (a free port) from a thread; a context manager.
    ``mounts`` maps a URL prefix (``"mathjax"``) to a folder; ``url(prefix, path)``."""

    def __init__(self, mounts: dict[str, Path]):
        self.mounts = {k.strip("/"): Path(v) for k, v in mounts.items()}
        mounts_ = self.mounts

        class Handler(http.server.SimpleHTTPRequestHandler):
            def translate_path(self, path):
                parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/")
                prefix, _, rest = parts.partition("/")
                folder = mounts_.get(prefix)
                if folder is None:
                    return str(Path(tempfile.gettempdir()) / "vjp-no-such-file")
                target = (folder / rest).resolve()
                return str(target if target.is_relative_to(folder.resolve()) else folder)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, prefix: str, path: str = "") -> str:
        return f"{self.base}/{prefix.strip('/')}/{urllib.parse.quote(path)}"

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# Code in the outputs of JupyterLab or of nbconvert's HTML (not the input cells): set in a
# monospace font (same width for "i" and "M"), and never broken mid-identifier (a soft line
# break between two word characters).
CODE_PROBLEMS = r"""() => {
    const out = [];
    const pres = [...document.querySelectorAll('.jp-OutputArea-output pre, .output_area pre')]
        .filter(pre => !pre.closest('.jp-InputArea, .input_area'));
    for (const pre of pres) {
        const width = (text) => {
            const probe = document.createElement('span');
            probe.textContent = text;
            pre.appendChild(probe);
            const w = probe.getBoundingClientRect().width;
            probe.remove();
            return w;
        };
        if (Math.abs(width('iiiiiiiiii') - width('MMMMMMMMMM')) > 1) {
            out.push('code in a proportional font (' + getComputedStyle(pre).fontFamily + '): '
                     + pre.textContent.trim().slice(0, 60));
        }
        const range = document.createRange();
        const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
        let prev = null;
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (let i = 0; i < node.length; i++) {
                const ch = node.data[i];
                if (ch === '\n') { prev = null; continue; }
                range.setStart(node, i);
                range.setEnd(node, i + 1);
                const box = range.getClientRects()[0];
                if (!box) continue;
                const soft = prev !== null && box.top > prev.top + 2;
                if (soft && /\w/.test(prev.ch) && /\w/.test(ch)) {
                    out.push('code broken mid-identifier at ' + window.innerWidth + ' px: '
                             + JSON.stringify(prev.line + ' / ' + ch));
                }
                prev = {ch, top: box.top, line: ((prev && !soft) ? prev.line : '') + ch};
            }
        }
    }
    return out;
}"""
