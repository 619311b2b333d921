"""Real Jupyter for the notebook and browser tests (and ``docs/make_screenshot.py``).

* :func:`isolated_jupyter_env` — a private Jupyter config/data/runtime tree whose only
  ``python3`` kernelspec runs *this* interpreter (``sys.executable``), so kernels import the
  package under test and nothing leaks into or out of the user's own Jupyter setup;
* :class:`LabServer` — ``jupyter lab`` on 127.0.0.1, a free port, a token; always stopped;
* :func:`launch_chromium` / :func:`run_notebook_in_lab` — headless Chromium through Playwright
  opening a notebook, running all cells, and waiting for the kernel and MathJax.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "demo_notebooks"
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


def magic_cells(nb) -> list[int]:
    """Indices (among all cells) of the code cells that run ``%%vjp`` or ``%jacobian``."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and (c.source.lstrip().startswith("%%vjp") or "%jacobian" in c.source)]


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
        return f"{self.url}/lab/tree/{name}?token={self.token}"

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


# Every LaTeX output typeset (after an error output: every one there is). MathJax replaces all
# the math of one output node in one pass, so an mjx-container means the node is done.
_ALL_TYPESET = """(expected) => {
    const nodes = [...document.querySelectorAll('.jp-Notebook .jp-RenderedLatex')];
    const failed = document.querySelector(
        '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    return (failed || nodes.length >= expected)
        && nodes.every(n => n.querySelector('mjx-container'));
}"""
_UNTYPESET = """() => [...document.querySelectorAll('.jp-Notebook .jp-RenderedLatex')]
    .filter(n => !n.querySelector('mjx-container')).map(n => n.textContent.slice(0, 300))"""
# The kernel is idle and every code cell shows an execution count ("[12]:", not "[*]:" or
# "[ ]:"), or it is idle after an error output (which cancels the cells queued after it).
_ALL_EXECUTED = """(codeCells) => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const idle = !status || status.getAttribute('data-status') === 'idle';
    const failed = document.querySelector(
        '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    return idle && (failed || (prompts.length === codeCells
        && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))));
}"""


def run_notebook_in_lab(page, server: LabServer, nb, name: str, timeout_s: float = 90) -> None:
    """Open notebook ``name`` (content ``nb``) in JupyterLab, run all cells from the Run menu,
    and wait until every cell has run and every magic's LaTeX output is typeset by MathJax."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    timeout = timeout_s * 1000
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    latex_outputs = len(magic_cells(nb))
    page.goto(server.notebook_url(name), timeout=timeout)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout)
    # Before the kernel has started the indicator already reads "idle", and "Run All" would ask
    # which kernel to start: wait until the server has the session's kernel up, then the page.
    server.wait_for_kernel(name, timeout_s)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        state="attached", timeout=timeout)
    menu_bar = page.locator("#jp-MainMenu .lm-MenuBar-itemLabel")
    menu_bar.filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
    page.wait_for_function(_ALL_EXECUTED, arg=code_cells, timeout=timeout, polling=250)
    try:
        page.wait_for_function(_ALL_TYPESET, arg=latex_outputs, timeout=timeout, polling=250)
    except PlaywrightTimeout:
        raise AssertionError(f"LaTeX outputs not typeset by MathJax: {page.evaluate(_UNTYPESET)}"
                             ) from None
