"""Review, session 40 (R3), of what users read on sparse and per-sample results: the sentences
of the display (counts of nonzeros, colours, passes, the listed entries of v), the code it shows
(run in the user's namespace after their cell, it must reproduce the Jacobian), numbers written
for people, plain text readable in a terminal, sizes that stay summarised, refusals that say
what to do.

Expected facts come from mathematics (3n - 2 nonzeros of a tridiagonal matrix, 5k² - 4k of the
5-point stencil on a k × k grid, the closed-form derivatives) or from
``torch.autograd.functional.jacobian`` / ``torch.func`` (``per_sample_reference.vmap_grad``),
never from the code under test. Strict xfails are findings (``R3-n`` in their reasons).
"""
from __future__ import annotations

import re

import pytest
import torch

from per_sample_reference import vmap_grad

TRIDIAGONAL = """%%vjp
x = torch.linspace(-1, 1, 100_000, requires_grad=True)
p = F.pad(x, (1, 1))
y = p[:-2] - 2 * p[1:-1] ** 3 + p[2:]
"""
LAPLACIAN = """%%vjp --explain
u = torch.randn(40, 40, requires_grad=True, generator=torch.Generator().manual_seed(0))
q = F.pad(u, (1, 1, 1, 1))
lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u ** 3
"""
CONV = """%%vjp
torch.manual_seed(0)
s = torch.randn(1, 1, 3000, requires_grad=True)
c1 = nn.Conv1d(1, 4, 3, padding=1); c2 = nn.Conv1d(4, 1, 5, padding=2)
out = c2(torch.tanh(c1(s)))
"""
ENERGY = """w = torch.linspace(-1, 1, 100_000, dtype=torch.float64, requires_grad=True)
e = (torch.diff(w) ** 2).sum() + (w ** 4).sum()
"""
FENCE = re.compile(r"```python\n(.*?)```", re.S)
SEPARATED = re.compile(r"(?<![\w.\[,])\d{1,3}(?:,\d{3})+(?![\w.])")  # 299,998


def _bundle(r) -> dict:
    data = r._repr_mimebundle_()
    return data[0] if isinstance(data, tuple) else data


def _code(r) -> str:
    """The one python block of the markdown (the code the user copies)."""
    blocks = FENCE.findall(_bundle(r)["text/markdown"])
    assert len(blocks) == 1, blocks
    return blocks[0]


def _prose(plain: str) -> str:
    """The plain text without its code (indented four) and its matrices' rows."""
    keep = [line for line in plain.splitlines()
            if not line.startswith("    ") and not re.search(r"\[.*\]\s*$", line)]
    return "\n".join(keep)


def _run_shown_code(ip, r) -> None:
    done = ip.run_cell(_code(r))
    assert done.success, done.error_in_exec


def _setup(ip):
    ip.run_cell("import torch.nn.functional as F\nfrom torch import nn")


def _read_compressed(g2, colour, rows, cols):
    """J[p, q] = g2[colour[p], q], as the shown code's last comment says."""
    return g2[colour[rows], cols]


# --------------------------------------------------------------------------------------------
# Tridiagonal at 10^5: y[i] = x[i-1] - 2 x[i]^3 + x[i+1]
# --------------------------------------------------------------------------------------------

def _tridiagonal_truth(x):
    n = x.numel()
    i = torch.arange(n)
    rows = torch.cat([i, i[1:], i[:-1]])
    cols = torch.cat([i, i[:-1], i[1:]])
    values = torch.cat([-6 * x.detach() ** 2, torch.ones(2 * n - 2)])
    return rows, cols, values


def test_tridiagonal_sentences_count_what_mathematics_counts(ip, run_ok):
    _setup(ip)
    r = run_ok(TRIDIAGONAL)
    n = 100_000
    for mime in ("text/plain", "text/markdown", "text/latex"):
        text = re.sub(r"\s+", " ", _bundle(r)[mime])
        assert f"{3 * n - 2:,} nonzeros" in text, mime
        assert "3 backward passes" in text and "at most 3 a row" in text, mime
        assert f"{n:,}" in text and "1e+05" not in text and "e+0" not in text, mime


def test_tridiagonal_listed_entries_are_the_ones_of_v(ip, run_ok):
    """'v is 1 on entries 0, 3, 6, … of y': those are the first ones of the colour-0 v the code
    builds, and two of them are never closer than 3 (rows i, j of a tridiagonal matrix read
    disjoint entries iff |i - j| ≥ 3)."""
    _setup(ip)
    r = run_ok(TRIDIAGONAL)
    listed = re.search(r"v is 1 on entries ([\d, ]+), … of y", re.sub(r"\s+", " ",
                                                                   _bundle(r)["text/plain"]))
    assert listed, _bundle(r)["text/plain"]
    entries = [int(k) for k in listed.group(1).split(",")]
    _run_shown_code(ip, r)
    colour = ip.user_ns["colour"]
    ones = torch.nonzero(colour == colour[entries[0]]).ravel()
    assert ones[:len(entries)].tolist() == entries
    assert ones.diff().min() >= 3


def test_tridiagonal_shown_code_reproduces_every_nonzero(ip, run_ok):
    _setup(ip)
    r = run_ok(TRIDIAGONAL)
    _run_shown_code(ip, r)
    ns = ip.user_ns
    rows, cols, values = _tridiagonal_truth(ns["x"])
    torch.testing.assert_close(_read_compressed(ns["g2"], ns["colour"], rows, cols), values)
    assert ns["x"].grad is None  # the code leaves .grad as it found it (None)


def test_tridiagonal_plain_text_fits_a_terminal(ip, run_ok):
    _setup(ip)
    plain = _bundle(run_ok(TRIDIAGONAL))["text/plain"]
    assert max(len(line) for line in plain.splitlines()) <= 100
    assert len(plain.splitlines()) <= 48  # two screens of a 24-line terminal


# --------------------------------------------------------------------------------------------
# 5-point Laplacian on a 40 x 40 grid, --explain
# --------------------------------------------------------------------------------------------

def _laplacian_jacobian(ns):
    def f(t):
        q = torch.nn.functional.pad(t, (1, 1, 1, 1))
        return q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * t + t ** 3
    return torch.autograd.functional.jacobian(f, ns["u"].detach()).reshape(1600, 1600)


def test_laplacian_sentences_count_what_mathematics_counts(ip, run_ok):
    _setup(ip)
    r = run_ok(LAPLACIAN)
    k = 40
    text = re.sub(r"\s+", " ", _bundle(r)["text/plain"])
    assert f"{5 * k * k - 4 * k:,} nonzeros of {k * k:,} × {k * k:,}" in text
    assert "5 colours" in text and "5 in all" in text and "at most 5 a row" in text


def test_laplacian_explained_rows_read_what_the_jacobian_says(ip, run_ok):
    """'lap[0,0] reads u[0,0], u[0,1], u[1,0]; lap[0,5], of the same colour, reads …': the
    entries are the nonzeros of those rows of jacobian(), the colours are equal in the code."""
    _setup(ip)
    r = run_ok(LAPLACIAN)
    text = re.sub(r"\s+", " ", _bundle(r)["text/plain"])
    said = re.search(r"lap\[(\d+),(\d+)\] reads ([u\[\]\d, ]+?); lap\[(\d+),(\d+)\], of the same "
                     r"colour, reads ([u\[\]\d, ]+?): rows (\d+) and (\d+) of J", text)
    assert said, text
    _run_shown_code(ip, r)
    ns = ip.user_ns
    jac = _laplacian_jacobian(ns)
    for (a, b, entries), row in zip([said.group(1, 2, 3), said.group(4, 5, 6)],
                                    [int(said.group(7)), int(said.group(8))]):
        assert int(a) * 40 + int(b) == row
        read = sorted(tuple(map(int, m)) for m in re.findall(r"u\[(\d+),(\d+)\]", entries))
        truth = sorted((int(q) // 40, int(q) % 40) for q in jac[row].nonzero().ravel())
        assert read == truth, (row, read, truth)
    assert ns["colour"][int(said.group(7))] == ns["colour"][int(said.group(8))]


def test_laplacian_shown_code_reproduces_jacobian(ip, run_ok):
    _setup(ip)
    r = run_ok(LAPLACIAN)
    _run_shown_code(ip, r)
    ns = ip.user_ns
    jac = _laplacian_jacobian(ns)
    rows, cols = jac.nonzero(as_tuple=True)
    assert rows.numel() == 5 * 40 * 40 - 4 * 40
    torch.testing.assert_close(_read_compressed(ns["g2"], ns["colour"].reshape(-1), rows, cols),
                               jac[rows, cols])
    assert ns["g2"].shape[0] == 5


def test_laplacian_e_sum_lists_the_first_ones_of_v(ip, run_ok):
    """'v = e0 + e5 + …': the first flattened entries of colour 0 in the code's colouring."""
    _setup(ip)
    r = run_ok(LAPLACIAN)
    listed = re.search(r"v = ((?:e\d+ \+ )+)…", re.sub(r"\s+", " ", _bundle(r)["text/plain"]))
    assert listed, _bundle(r)["text/plain"]
    entries = [int(k) for k in re.findall(r"e(\d+)", listed.group(1))]
    _run_shown_code(ip, r)
    colour = ip.user_ns["colour"].reshape(-1)
    ones = torch.nonzero(colour == colour[entries[0]]).ravel()
    assert ones[:len(entries)].tolist() == entries


# --------------------------------------------------------------------------------------------
# A conv stack: two Conv1d layers (kernels 3 and 5): a 7-point stencil
# --------------------------------------------------------------------------------------------

def _conv_jacobian(ns):
    c1, c2 = ns["c1"], ns["c2"]
    with torch.no_grad():
        return torch.autograd.functional.jacobian(
            lambda t: c2(torch.tanh(c1(t))), ns["s"].detach()).reshape(3000, 3000)


def test_conv_stack_counts_and_code_match_the_jacobian(ip, run_ok):
    _setup(ip)
    r = run_ok(CONV)
    ns = ip.user_ns
    jac = _conv_jacobian(ns)
    rows, cols = jac.nonzero(as_tuple=True)
    text = re.sub(r"\s+", " ", _bundle(r)["text/plain"])
    passes = int(re.search(r"(\d+) backward passes give all", text).group(1))
    assert f"{rows.numel():,} nonzero derivatives" in text
    assert passes == int((jac != 0).sum(1).max())  # 7 rows share an entry of s: the optimum
    _run_shown_code(ip, r)
    assert ns["g2"].shape[0] == passes
    torch.testing.assert_close(_read_compressed(ns["g2"], ns["colour"], rows, cols),
                               jac[rows, cols])


# --------------------------------------------------------------------------------------------
# A banded Hessian at 10^5: e = Σ (w[i+1] - w[i])² + Σ w[i]⁴
# --------------------------------------------------------------------------------------------

def _energy_hessian_truth(w):
    n = w.numel()
    i = torch.arange(n)
    diag = 12 * w.detach() ** 2 + 4
    diag[0] -= 2
    diag[-1] -= 2
    rows = torch.cat([i, i[1:], i[:-1]])
    cols = torch.cat([i, i[:-1], i[1:]])
    return rows, cols, torch.cat([diag, torch.full((2 * n - 2,), -2.0, dtype=w.dtype)])


def test_hessian_sentences_and_code_reproduce_every_nonzero(ip, run_ok):
    _setup(ip)
    run_ok(ENERGY)
    h = run_ok("%hessian e w")
    text = re.sub(r"\s+", " ", _bundle(h)["text/plain"])
    assert "299,998 nonzeros from 3 Hessian-vector products" in text
    _run_shown_code(ip, h)
    ns = ip.user_ns
    rows, cols, values = _energy_hessian_truth(ns["w"])
    # the code's comment: H[p, q] = Hu[colour[q], p] at each nonzero
    torch.testing.assert_close(ns["Hu"][ns["colour"][cols], rows], values)


def test_hessian_as_the_gradients_jacobian_explained_and_reproduced(ip, run_ok):
    _setup(ip)
    run_ok(ENERGY)
    r = run_ok("%%vjp --picture --explain\ng, = torch.autograd.grad(e, w, create_graph=True)")
    text = re.sub(r"\s+", " ", _bundle(r)["text/plain"])
    assert "g[0] reads w[0], w[1]; g[3], of the same colour, reads w[2], w[3], w[4]" in text
    assert "3 in all, gives every one of the 299,998 nonzeros" in text
    _run_shown_code(ip, r)
    ns = ip.user_ns
    rows, cols, values = _energy_hessian_truth(ns["w"])
    torch.testing.assert_close(_read_compressed(ns["g2"], ns["colour"], rows, cols), values)


def test_the_earlier_cell_note_names_the_tensor_as_the_user_does(ip, run_ok):
    _setup(ip)
    run_ok(ENERGY)
    r = run_ok("%%vjp\ng, = torch.autograd.grad(e, w, create_graph=True)")
    note = re.sub(r"\s+", " ", _bundle(r)["text/plain"]).split("Computed on", 1)[1]
    assert "of shape ()" not in note and " e " in note.replace("(", " ").replace(")", " ")
    assert not re.search(r"\([^()]*\(", note), note


@pytest.mark.parametrize("flag", ["--picture", "--explain"])
def test_hessian_refusals_say_how_to_picture_or_explain_the_hessian(ip, run_ok, usage_error,
                                                                       flag):
    _setup(ip)
    run_ok(ENERGY)
    message = usage_error(f"%hessian {flag} e w")
    assert "create_graph" in message or "of the gradient" in message, message


# --------------------------------------------------------------------------------------------
# Numbers for people, singular and plural, sizes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, passes", [
    ("x = torch.randn(1000, requires_grad=True)\ny = x.flip(0) * 2", "1 backward pass "),
    ("x = torch.randn(1000, requires_grad=True)\ny = x[1:] * x[:-1]", "2 backward passes "),
])
def test_pass_counts_agree_in_number(ip, run_ok, cell, passes):
    plain = re.sub(r"\s+", " ", _bundle(run_ok("%%vjp\n" + cell))["text/plain"])
    assert passes in plain, plain
    assert "1 backward passes" not in plain


@pytest.mark.parametrize("cell", [TRIDIAGONAL, LAPLACIAN, CONV])
def test_prose_numbers_have_thousands_separators(ip, run_ok, cell):
    """Every number of 1,000 or more in the prose (not an index in code or a matrix row)."""
    _setup(ip)
    prose = _prose(_bundle(run_ok(cell))["text/plain"])
    bare = [m for m in re.findall(r"(?<![\w\[\],.^])\d{4,}(?![\w\]])", prose)]
    assert not bare, bare
    assert not re.search(r"\d[eE][+-]?\d", prose), prose


@pytest.mark.slow
def test_a_million_unknowns_stay_summarised(ip, run_ok):
    """10^6 rows: each mime type under 20 KB (DESIGN: O(1) rendering) and the counts exact."""
    _setup(ip)
    r = run_ok(TRIDIAGONAL.replace("100_000", "1_000_000"))
    for mime, text in _bundle(r).items():
        if isinstance(text, str):
            assert len(text.encode()) < 20_000, (mime, len(text))
    assert f"{3 * 10 ** 6 - 2:,} nonzeros" in re.sub(r"\s+", " ", _bundle(r)["text/plain"])


# --------------------------------------------------------------------------------------------
# Per-sample: --wrt net with 42 parameter tensors
# --------------------------------------------------------------------------------------------

NET = """torch.manual_seed(0)
net = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(8, 8), nn.LayerNorm(8),
                                                    nn.Tanh())], nn.Linear(8, 3))
with torch.no_grad():
    for m in net:
        if isinstance(m, nn.LayerNorm):
            m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.5, 0.5)
data = torch.randn(16, 8)
targets = torch.randint(0, 3, (16,))
"""
PER_SAMPLE = "%%vjp --wrt net\nlosses = F.cross_entropy(net(data), targets, reduction='none')"


def _table_rows(plain: str) -> dict:
    """name → (shape text, norm, max) of the summary table's rows shown."""
    rows = {}
    for line in plain.splitlines():
        m = re.match(r"^\s*(net\[\d+\]\.\w+) \[\s*(\d+(?: × \d+)*)\s+(\S+)\s+(\S+)\]\s*$", line)
        if m:
            rows[m.group(1)] = (m.group(2), float(m.group(3)), float(m.group(4)))
    return rows


def _dotted(name: str) -> str:
    """net[0].weight → 0.weight, as named_parameters() names it."""
    return re.sub(r"\[(\d+)\]", r".\1", name).removeprefix("net.")


def test_per_sample_summary_counts_tensors_and_entries(ip, run_ok):
    _setup(ip)
    run_ok(NET)
    net = ip.user_ns["net"]
    r = run_ok(PER_SAMPLE)
    text = re.sub(r"\s+", " ", _bundle(r)["text/plain"])
    params = list(net.parameters())
    assert len(params) == 42
    assert f"From {len(params)} tensors ({sum(p.numel() for p in params):,} entries)" in text


def test_per_sample_table_numbers_are_the_reference_norms_and_largest_entries(ip, run_ok):
    _setup(ip)
    run_ok(NET)
    ns = ip.user_ns
    reference = vmap_grad(ns["net"], ns["data"], ns["targets"])
    r = run_ok(PER_SAMPLE)
    rows = _table_rows(_bundle(r)["text/plain"])
    assert len(rows) >= 8, _bundle(r)["text/plain"]
    for name, (shape, norm, largest) in rows.items():
        g = reference[_dotted(name)]
        assert shape == " × ".join(map(str, g.shape[1:])), (name, shape)
        assert norm == pytest.approx(float(g.norm()), rel=6e-3), name
        assert largest == pytest.approx(float(g.abs().max()), rel=6e-3), name


def test_per_sample_every_tensor_reachable_from_r(ip, run_ok):
    _setup(ip)
    run_ok(NET)
    ns = ip.user_ns
    reference = vmap_grad(ns["net"], ns["data"], ns["targets"])
    r = run_ok(PER_SAMPLE)
    assert set(r.derivatives) == {f"net.{name}" for name in reference}
    for name, g in reference.items():
        torch.testing.assert_close(r.derivatives[f"net.{name}"], g, rtol=1e-4,
                                   atol=1e-6)


def test_per_sample_display_fits_one_screen(ip, run_ok):
    _setup(ip)
    run_ok(NET)
    plain = _bundle(run_ok(PER_SAMPLE))["text/plain"]
    lines = plain.splitlines()
    assert len(lines) <= 30 and max(map(len, lines)) <= 100, plain


def test_per_sample_shown_access_works(ip, run_ok):
    """'r.derivatives['net.0.weight'] for net[0].weight': the spelling shown evaluates."""
    _setup(ip)
    run_ok(NET)
    r = run_ok(PER_SAMPLE)
    said = re.search(r"\(r\.derivatives\[('[\w.]+')\] for ([\w\[\].]+);",
                     re.sub(r"\s+", " ", _bundle(r)["text/plain"]))
    assert said, _bundle(r)["text/plain"]
    ip.user_ns["r"] = r
    got = ip.ev(f"r.derivatives[{said.group(1)}]")
    assert got.shape == (16, *ip.ev(said.group(2)).shape)


# --------------------------------------------------------------------------------------------
# Mistakes: short, no traceback, say what to do
# --------------------------------------------------------------------------------------------

def test_a_misspelt_wrt_module_is_one_short_line(ip, run_ok, usage_error):
    _setup(ip)
    run_ok(NET)
    message = usage_error("%%vjp --wrt nett\nlosses = F.cross_entropy(net(data), targets, "
                          "reduction='none')")
    assert "net" in message.replace("nett", "") and "Traceback" not in message
    assert len(message) < 200 and "\n" not in message.strip()


# --------------------------------------------------------------------------------------------
# Per-sample: "the matrices of the few that matter" (issue 23, item 6)
# --------------------------------------------------------------------------------------------

def _mlp(layers: int) -> str:
    return (f"torch.manual_seed(0)\nnet = nn.Sequential(*[m for _ in range({layers}) for m in "
            "(nn.Linear(8, 8), nn.Tanh())], nn.Linear(8, 3))\n"
            "data = torch.randn(16, 8)\ntargets = torch.randint(0, 3, (16,))\n")


def _matrices_shown(plain: str) -> set:
    return set(re.findall(r"∂losses_i/∂(net\[\d+\]\.\w+)_j", plain))


def test_the_not_shown_sentence_names_every_matrix_left_out(ip, run_ok):
    _setup(ip)
    run_ok(_mlp(3))
    names = [n for n, _ in ip.user_ns["net"].named_parameters()]
    plain = _bundle(run_ok(PER_SAMPLE))["text/plain"]
    said = re.sub(r"\s+", " ", plain)
    left = re.search(r"Not shown, to fit one screen: the matrices of (.*?);", said)
    assert left, said
    named_left = set(re.findall(r"net\[\d+\]\.\w+", left.group(1)))
    shown = _matrices_shown(plain)
    everyone = {re.sub(r"^(\d+)\.", r"net[\1].", n) for n in names}
    assert named_left | shown == everyone, (named_left, shown)


@pytest.mark.parametrize("cell", ["mlp6", "net42"])
def test_a_big_model_shows_the_matrix_of_its_largest_gradient(ip, run_ok, cell):
    _setup(ip)
    run_ok(_mlp(6) if cell == "mlp6" else NET)
    ns = ip.user_ns
    reference = vmap_grad(ns["net"], ns["data"], ns["targets"])
    largest = max(reference, key=lambda k: float(reference[k].norm()))
    plain = _bundle(run_ok(PER_SAMPLE))["text/plain"]
    assert re.sub(r"^(\d+)\.", r"net[\1].", largest) in _matrices_shown(plain), plain


@pytest.mark.parametrize("cell", ["laplacian", "mlp1"])
def test_plain_text_never_wraps_inside_an_index_or_a_shape(ip, run_ok, cell):
    _setup(ip)
    if cell == "mlp1":
        run_ok(_mlp(1))
    plain = _bundle(run_ok(LAPLACIAN if cell == "laplacian" else PER_SAMPLE))["text/plain"]
    for line in _prose(plain).splitlines():
        assert line.count("[") == line.count("]"), line
        assert not re.search(r"\(\d+$", line) and not line.startswith("×"), line


def test_the_more_inputs_note_gives_each_input_its_own_key(ip, run_ok):
    _setup(ip)
    run_ok("torch.manual_seed(0)\nnet = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), "
           "nn.Linear(64, 10))\ndata = torch.randn(8, 64)\n"
           "targets = torch.randint(0, 10, (8,))")
    said = re.sub(r"\s+", " ", _bundle(run_ok(PER_SAMPLE))["text/plain"])
    note = re.search(r"Not shown, to fit one screen: (\d+) more inputs, (.*?), each in (.*?)"
                     r"(?: by its name| \(r = _)",
                     said)
    assert note, said
    listed = re.findall(r"net\[\d+\]\.\w+", note.group(2))
    assert len(listed) == int(note.group(1)) == 3
    keys = re.findall(r"r\.derivatives\['([\w.]+)'\]", note.group(3))
    assert "r.derivatives[name]" in note.group(3) or \
        sorted(keys) == sorted(f"net.{_dotted(n)}" for n in listed), note.group(0)


# --------------------------------------------------------------------------------------------
# --picture: the caption's count of nonzeros not drawn
# --------------------------------------------------------------------------------------------

def test_the_pictures_caption_counts_the_nonzeros_it_leaves_out(ip, run_ok, monkeypatch):
    """'rows 0–R of M, columns 0–C of N; K nonzeros lie in columns past C, not drawn': K from
    the 5-point stencil on a 200 × 200 grid (tests/stencils), for the rows and columns said."""
    from stencils import stencil

    _setup(ip)
    shown = []
    monkeypatch.setattr(ip.display_pub, "publish",
                        lambda data, metadata=None, **kw: shown.append((data, metadata or {})))
    run_ok("%%vjp --picture\nu = torch.randn(200, 200, requires_grad=True)\n"
           "q = F.pad(u, (1, 1, 1, 1))\n"
           "lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u ** 3")
    alts = [md.get("image/png", {}).get("alt", "") for data, md in shown if "image/png" in data]
    assert alts, shown
    said = re.search(r"rows 0–(\d+) of 40,000, columns 0–(\d+) of 40,000; (\d+) nonzeros lie in "
                     r"columns past \d+, not drawn", alts[0])
    assert said, alts[0]
    last_row, last_col, left = map(int, said.groups())
    crow, col = stencil((200, 200), [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)])
    cols = col[:crow[last_row + 1]]
    assert left == int((cols > last_col).sum())


# --------------------------------------------------------------------------------------------
# Mistakes on the result (a plain cell after the display)
# --------------------------------------------------------------------------------------------

SMALL_NET = ("torch.manual_seed(0)\nnet = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), "
             "nn.Linear(4, 3))\ndata = torch.randn(8, 4)\ntargets = torch.randint(0, 3, (8,))")


def test_the_result_takes_the_name_the_display_shows(ip, run_ok):
    _setup(ip)
    run_ok(SMALL_NET)
    r = run_ok(PER_SAMPLE)
    assert "net[0].weight" in _bundle(r)["text/plain"]
    torch.testing.assert_close(r.jacobian("net[0].weight"), r.jacobian("net.0.weight"))


@pytest.mark.parametrize("mistake", ["r.jacobian('x', layout=torch.sparse_coo)",
                                     "r.jacobian('z')"])
def test_a_mistake_on_the_result_is_shown_without_internals(ip, run_ok, capsys, mistake):
    _setup(ip)
    ip.user_ns["r"] = run_ok(TRIDIAGONAL.replace("100_000", "1_000"))
    capsys.readouterr()
    done = ip.run_cell(mistake)
    shown = capsys.readouterr()
    assert not done.success
    text = shown.out + shown.err
    assert "inputs are x" in text or "sparse_csr" in text, text  # it says what to do
    assert "result.py" not in text and "contextlib" not in text, text


def test_a_jacobian_lines_code_names_its_output_and_reproduces_it(ip, run_ok):
    """%jacobian of an expression: the code shown first gives the expression a name that was
    free, then reproduces every nonzero (y[i] = x[i-1] + x[i]³ + x[i+1]: 3x² and 1)."""
    _setup(ip)
    run_ok("x = torch.linspace(-1, 1, 1000, requires_grad=True)\ny = 'the user keeps this'")
    r = run_ok("%jacobian F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:] wrt x")
    _run_shown_code(ip, r)
    ns = ip.user_ns
    assert ns["y"] == "the user keeps this"
    g = next(v for k, v in ns.items() if re.fullmatch(r"g\d*", k) and isinstance(v, torch.Tensor)
             and v.shape == (3, 1000))
    colour = next(v for k, v in ns.items() if re.fullmatch(r"colour\d*", k))
    rows, cols, _ = _tridiagonal_truth(ns["x"])
    values = torch.where(rows == cols, 3 * ns["x"].detach()[rows] ** 2, torch.ones(()))
    torch.testing.assert_close(_read_compressed(g, colour, rows, cols), values)
