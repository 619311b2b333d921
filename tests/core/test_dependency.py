"""Dependency patterns and their verdicts, and sensitivity summaries (issue 13).

Expected patterns come from ``torch.autograd.functional.jacobian`` or from mathematics (a
causal mask is the lower triangle, a stack of convolutions a band as wide as its receptive
field), never from the code under test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core import dependency as dep_module
from vjp_magic.core import grouptest
from vjp_magic.core.dependency import Kind, dependency, probe_pattern, verdict
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.render.findings import sensitivity
from vjp_magic.render.options import RenderOptions

# A Jacobian this small is shown in full, so the display leaves out its "dense" line: a lower
# threshold shows the findings of every verdict.
FINDINGS = RenderOptions(threshold=5)
# Room for every part of a display (the default height budget of one screen leaves out the
# table of sensitivities first, saying so).
TALL = RenderOptions(height=10_000)


def shown(r) -> str:
    """What the user sees of a result: its display, as plain text on one line."""
    return " ".join(repr(r).split())


def sensitivity_block(r) -> str:
    """The sensitivity summary of a result's display (its lines as shown), else ""."""
    return next((block for block in repr(r).split("\n\n") if block.startswith("|∂y/∂x|")), "")


def true_pattern(f, x, out_axis, in_axis):
    """Which indices along out_axis read which along in_axis, from torch's own Jacobian."""
    jac = torch.autograd.functional.jacobian(f, x.detach(), vectorize=True)
    k = jac.dim() - x.dim()
    out_axis, in_axis = out_axis % k, in_axis % x.dim()
    rest = [d for d in range(jac.dim()) if d not in (out_axis, k + in_axis)]
    nonzero = (jac != 0).permute(out_axis, k + in_axis, *rest)
    return nonzero.reshape(jac.shape[out_axis], x.shape[in_axis], -1).any(-1)


def leak_pattern(n):
    pattern = torch.eye(n, dtype=torch.bool)
    pattern[1, 0] = True
    return pattern


# -- the verdict, on patterns made by hand ----------------------------------------------------
def band(n, lo, hi, m=None):
    i = torch.arange(m or n)[:, None]
    j = torch.arange(n)[None, :]
    return (j - i >= lo) & (j - i <= hi)


@pytest.mark.parametrize("pattern, expected", [
    (torch.eye(5, dtype=torch.bool), ("independent", None, None)),
    (torch.zeros(4, 4, dtype=torch.bool), ("independent", None, None)),
    (leak_pattern(6), ("band", (1, 0), (-1, 0))),
    (band(5, -4, 0), ("lower-triangular", (1, 0), (-4, 0))),
    (band(5, -4, -1), ("lower-triangular", (1, 0), (-4, -1))),  # strictly causal
    (band(5, 0, 4), ("upper-triangular", (0, 1), (0, 4))),
    (band(5, -4, 1), ("band", (0, 1), (-4, 1))),  # t also sees t + 1
    (band(5, -1, 4), ("band", (1, 0), (-1, 4))),  # mirrored
    (band(6, -2, 2), ("band", (0, 1), (-2, 2))),
    (band(6, -2, 0), ("band", (1, 0), (-2, 0))),  # a causal conv: not the whole triangle
    (torch.ones(4, 4, dtype=torch.bool), ("dense", (0, 1), None)),
    (torch.ones(3, 5, dtype=torch.bool), ("dense", (0, 1), None)),
    (band(5, -1, 1, m=3), ("band", (0, 1), (-1, 1))),
])
def test_verdict_of_hand_made_patterns(pattern, expected):
    assert verdict(pattern) == expected


def test_kinds_are_a_closed_set_that_reads_as_words():
    assert [k.value for k in Kind] == ["independent", "lower-triangular", "upper-triangular",
                                       "band", "block-diagonal", "block-lower-triangular",
                                       "band with wrap-around", "sparse", "dense"]
    kind = verdict(band(5, -4, 0))[0]
    assert kind is Kind.LOWER_TRIANGULAR and kind == "lower-triangular"
    assert (str(kind), f"{kind}", repr(kind)) == ("lower-triangular", "lower-triangular",
                                                  "'lower-triangular'")


def test_witness_is_the_first_violation_row_major():
    pattern = torch.eye(6, dtype=torch.bool)
    pattern[4, 2] = pattern[2, 1] = True  # (2, 1) comes first row-major
    kind, witness, offsets = verdict(pattern)
    assert (kind, witness, offsets) == ("band", (2, 1), (-2, 0))


# -- elementwise: independent -----------------------------------------------------------------
def test_elementwise_is_independent_along_both_axes():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(x), x)
    for a, b in [(0, 0), (1, 1), (-1, -1)]:
        d = r.dependency("x", a, b)
        assert d.kind == "independent" and d.witness is None
        assert torch.equal(d.pattern, true_pattern(torch.sin, x, a, b))
        assert d.evidence == "proved"
    across = r.dependency(None, 0, 1)  # y[i, :] reads x[i, j] for every j
    assert torch.equal(across.pattern, true_pattern(torch.sin, x, 0, 1))
    probed = probe_pattern(torch.sin(x), x, 0, 1)
    assert torch.equal(probed.pattern, across.pattern) and probed.evidence == "probed"


def test_wrong_axes_are_usage_errors():
    x = torch.randn(5, 4, requires_grad=True)
    r = vjp_magic.differentiate(x * 2, x)
    with pytest.raises(VJPUsageError, match="No axis 2"):
        r.dependency("x", 2, 0)
    with pytest.raises(VJPUsageError, match="No axis -3"):
        r.dependency("x", 0, -3)
    with pytest.raises(VJPUsageError):
        dependency(x * 2, x, 0, 5)
    with pytest.raises(VJPUsageError, match="requires_grad"):
        dependency(x.detach() * 2, x.detach())
    y = (x * x).sum(1)
    y.sum().backward()  # frees the graph
    with pytest.raises(VJPUsageError, match="freed"):
        dependency(y, x)


# -- batch leaks ------------------------------------------------------------------------------
def leaky(x, w):
    """A row-wise layer, plus one leak: y[1] gets 0.1 · x[0]."""
    y = torch.tanh(x @ w).clone()
    y[1] = y[1] + 0.1 * x[0]
    return y


def test_batch_leak_small_from_result_probe_and_truth():
    torch.manual_seed(0)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64)
    truth = true_pattern(lambda t: leaky(t, w), x, 0, 0)
    assert torch.equal(truth, leak_pattern(8))
    y = leaky(x, w)
    probed = probe_pattern(y, x, 0, 0)
    r = vjp_magic.differentiate(y, x)
    exact = r.dependency("x", 0, 0)
    for d in (probed, exact):
        assert torch.equal(d.pattern, truth)
        assert (d.kind, d.witness, d.offsets) == ("band", (1, 0), (-1, 0))
        assert d.describe("y", "x") == "y[1] ← x[0]"
    assert r.inputs["x"].pairing == () and r.inputs["x"].rejected
    text = shown(r)
    assert "y[1] ← x[0] (row 1 of y reads row 0 of x)" in text
    assert "the derivatives below are the full Jacobian" in text


def test_batch_leak_at_4096_by_probes():
    torch.manual_seed(1)
    x = torch.randn(4096, 16, requires_grad=True)
    w = torch.randn(16, 16)
    d = dependency(leaky(x, w), x, 0, 0)
    assert torch.equal(d.pattern, leak_pattern(4096))
    assert (d.kind, d.witness, d.offsets) == ("band", (1, 0), (-1, 0))
    assert x.grad is None


def test_memory_refusal_at_4096_carries_the_verdict():
    torch.manual_seed(2)
    x = torch.randn(4096, 16, requires_grad=True)
    w = torch.randn(16, 16)
    h = torch.tanh(x @ w)
    y = torch.index_add(h, 0, torch.tensor([1]), 0.1 * x[:1])
    with pytest.raises(VJPUsageError) as info:  # full: no sparse path (see test_sparse_leak)
        vjp_magic.differentiate(y, x, memory_budget=2**26, full=True)
    message = str(info.value)
    assert "memory budget" in message and "y[1] ← x[0]" in message
    assert "band, offsets −1..0" in message
    found = info.value.dependency
    assert torch.equal(found.pattern, leak_pattern(4096)) and found.witness == (1, 0)


def test_a_refusal_without_a_verdict_stays_as_it_was(monkeypatch):
    x = torch.randn(3000, requires_grad=True)
    y = torch.softmax(x, 0)  # the pattern itself (3,000²) is over this budget
    with pytest.raises(VJPUsageError) as info:
        vjp_magic.differentiate(y, x, memory_budget=2**20, full=True)
    assert "memory budget" in str(info.value) and "independent" not in str(info.value)
    assert not hasattr(info.value, "dependency")
    monkeypatch.setattr(dep_module, "REFUSAL_SECONDS", 0.0)  # a verdict too slow to wait for
    x = torch.randn(4096, 16, requires_grad=True)
    y = torch.index_add(x.sin(), 0, torch.tensor([1]), 0.1 * x[:1])
    with pytest.raises(VJPUsageError) as info:
        vjp_magic.differentiate(y, x, memory_budget=2**26, full=True)
    assert not hasattr(info.value, "dependency") and "←" not in str(info.value)


def test_the_display_says_where_the_pairing_broke():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(x * 2 + 0.1 * x.roll(1, 0), x)
    assert r.inputs["x"].rejected and r.inputs["x"].pairing == ((1, 1),)
    text = shown(r)
    assert "y[1] ← x[0]" in text and "row 1 of y" in text.replace("\n", " ")
    assert "not independent" in text


# -- attention over positions: causal, off by one, no mask ------------------------------------
def attention(x, wq, wk, wv, diagonal):
    """softmax(QKᵀ) V over positions (axis 0); positions s > t + diagonal - 1 masked."""
    s = (x @ wq) @ (x @ wk).T
    if diagonal is not None:
        n = x.shape[0]
        s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal), -torch.inf)
    return torch.softmax(s, -1) @ (x @ wv)


@pytest.mark.parametrize("diagonal, kind, witness, offsets", [
    (1, "lower-triangular", (1, 0), lambda n: (-(n - 1), 0)),
    (2, "band", (0, 1), lambda n: (-(n - 1), 1)),  # off by one: t sees t + 1
    (None, "dense", (0, 1), lambda n: None),
])
@pytest.mark.parametrize("n", [6, 256])
def test_attention_masks(diagonal, kind, witness, offsets, n):
    torch.manual_seed(n)
    d = 8
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(d, d, dtype=torch.float64) / d**0.5 for _ in range(3)]
    y = attention(x, *ws, diagonal)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    expected = j <= i + (diagonal - 1) if diagonal is not None else torch.ones(n, n, dtype=bool)
    found = [probe_pattern(y, x, 0, 0)]
    if n <= 8:
        assert torch.equal(true_pattern(lambda t: attention(t, *ws, diagonal), x, 0, 0), expected)
        found.append(vjp_magic.differentiate(y, x).dependency("x", 0, 0))
    for dep in found:
        assert torch.equal(dep.pattern, expected)
        assert (dep.kind, dep.witness, dep.offsets) == (kind, witness, offsets(n))


def test_the_display_reads_the_mask():
    torch.manual_seed(3)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(4, 4, dtype=torch.float64) for _ in range(3)]
    lines = {}
    for diagonal in (1, 2, None):
        r = vjp_magic.differentiate(attention(x, *ws, diagonal), x, options=FINDINGS)
        lines[diagonal] = shown(r)
    assert "s ≤ t only (causal" in lines[1]
    assert "causal:" not in lines[2] and "t − 5 ≤ s ≤ t + 1" in lines[2]
    assert "dense" in lines[None] and "y[0] ← x[1]" in lines[None]


# -- convolution stacks: a band as wide as the receptive field ---------------------------------
def conv_stack(x, w1, w2, causal=False):
    if causal:  # left padding only: position t reads t - 1, t - 2, ... (not the whole past)
        h = torch.tanh(F.conv1d(F.pad(x, (w1.shape[-1] - 1, 0)), w1))
        return F.conv1d(F.pad(h, (w2.shape[-1] - 1, 0)), w2)
    h = torch.tanh(F.conv1d(x, w1, padding=w1.shape[-1] // 2))
    return F.conv1d(h, w2, padding=w2.shape[-1] // 2)


@pytest.mark.parametrize("length", [12, 1024])
@pytest.mark.parametrize("causal", [False, True])
def test_conv_stacks_are_bands(length, causal):
    torch.manual_seed(length)
    x = torch.randn(1, 2, length, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 2, 3, dtype=torch.float64)
    w2 = torch.randn(2, 2, 5, dtype=torch.float64)
    y = conv_stack(x, w1, w2, causal)
    lo, hi = (-6, 0) if causal else (-3, 3)  # receptive field: (3 - 1) + (5 - 1) = 6
    truth = true_pattern(lambda t: conv_stack(t, w1, w2, causal), x, 2, 2)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    assert torch.equal(truth, (j - i >= lo) & (j - i <= hi))
    found = [probe_pattern(y, x, -1, -1)]
    if length <= 16:
        found.append(vjp_magic.differentiate(y, x).dependency("x", 2, 2))
    for dep in found:
        assert torch.equal(dep.pattern, truth)
        assert (dep.kind, dep.offsets) == ("band", (lo, hi))
        assert dep.witness == ((1, 0) if causal else (0, 1))


# -- the probes' own safety net ---------------------------------------------------------------
def test_a_wrong_group_test_falls_back_to_one_probe_per_row(monkeypatch):
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64)
    monkeypatch.setattr(grouptest, "_group_test",
                        lambda prober, m, n: torch.eye(m, n, dtype=torch.bool))
    d = probe_pattern(leaky(x, w), x, 0, 0)
    assert torch.equal(d.pattern, leak_pattern(8)) and d.witness == (1, 0)


# -- sensitivities at many points -------------------------------------------------------------
def test_sensitivity_numbers_match_the_jacobian():
    torch.manual_seed(4)
    n = 50
    x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, dtype=torch.float64)
    r = vjp_magic.differentiate(torch.tanh(x @ w), x, options=TALL)
    assert r.inputs["x"].pairing == ((0, 0),)
    jac = torch.autograd.functional.jacobian(lambda t: torch.tanh(t @ w), x.detach())
    per_point = jac[torch.arange(n), :, torch.arange(n), :].abs()  # (point, k, feature)
    per_feature = per_point.permute(1, 2, 0).reshape(6, n)
    mean, largest, where = sensitivity(r, "x")
    assert torch.allclose(mean, per_feature.mean(1))
    assert torch.allclose(largest, per_feature.max(1).values)
    assert torch.equal(where, per_feature.argmax(1))
    text = sensitivity_block(r)
    assert "mean" in text and "50 points" in text and str(int(where[0])) in text


def test_sensitivity_is_summarised_and_only_for_many_points():
    x = torch.randn(500, 30, requires_grad=True)
    r = vjp_magic.differentiate(torch.tanh(x @ torch.randn(30, 2)), x, options=TALL)
    text = sensitivity_block(r)
    assert "60 in all" in " ".join(text.split()) and "500 points" in text
    assert len(text.splitlines()) <= 12  # a few rows, numpy-style, whatever the count
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    small = vjp_magic.differentiate(x**2, x)
    assert sensitivity_block(small) == ""  # nothing to say: no summary, no finding
    assert not any(finding in shown(small) for finding in ("not independent", "Along ", "mean"))


def test_a_table_of_sensitivities_left_out_to_fit_one_screen_is_named():
    torch.manual_seed(4)
    x = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    f = torch.tanh(x @ torch.randn(3, 2, dtype=torch.float64))
    tall = vjp_magic.differentiate(f, x, options=TALL)
    assert sensitivity_block(tall)  # there is a table to show
    r = vjp_magic.differentiate(f, x)  # one screen: 2 components of 50 x 3, the loop, no table
    assert not sensitivity_block(r)
    assert "Not shown, to fit one screen: the table of sensitivities" in shown(r)
    assert "VJPMagics.height" in shown(r)  # and how to see it


# -- every axis pair, read off a result and probed, against torch's Jacobian -------------------
def batched_causal_attention(x):
    n = x.shape[1]
    s = x @ x.transpose(1, 2)
    s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -torch.inf)
    return torch.softmax(s, -1) @ x


FUNCTIONS = {
    "batched causal attention": ((2, 5, 3), batched_causal_attention),
    "transpose times weights": ((3, 4), lambda x: x.T * torch.arange(1.0, 4.0).double()),
    "cumulative sum": ((4, 3), lambda x: torch.cumsum(x, 0) ** 2),
    "components": ((3, 4), lambda x: x * torch.arange(1.0, 3.0).double()[:, None, None]),
    "row mixing": ((5, 2), lambda x: torch.tanh(torch.diag(torch.ones(4), 1).double() @ x + x)),
}


@pytest.mark.parametrize("key", sorted(FUNCTIONS))
def test_every_axis_pair_matches_the_jacobian(key):
    shape, f = FUNCTIONS[key]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x)
    for a in range(y.dim()):
        for b in range(x.dim()):
            truth = true_pattern(f, x, a, b)
            exact, probed = r.dependency("x", a, b), probe_pattern(y, x, a, b)
            assert torch.equal(exact.pattern, truth), (a, b, r.inputs["x"].pairing)
            assert torch.equal(probed.pattern, truth), (a, b)
            assert (exact.kind, exact.witness, exact.offsets) == verdict(truth)


def test_findings_maths_is_safe_for_katex_and_mathjax():
    from vjp_magic.render import latex, markdown

    torch.manual_seed(5)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(4, 4, dtype=torch.float64) for _ in range(3)]
    conv = torch.randn(1, 2, 12, dtype=torch.float64, requires_grad=True)
    w1, w2 = torch.randn(2, 2, 3, dtype=torch.float64), torch.randn(2, 2, 5, dtype=torch.float64)
    rows = torch.randn(40, 3, requires_grad=True)
    results = [vjp_magic.differentiate(attention(x, *ws, d), x, options=FINDINGS)
               for d in (1, 2, None)]
    results += [vjp_magic.differentiate(conv_stack(conv, w1, w2), conv, options=FINDINGS),
                vjp_magic.differentiate(x * 2 + 0.1 * x.roll(1, 0), x, options=FINDINGS),
                vjp_magic.differentiate(torch.tanh(rows @ torch.randn(3, 2)), rows,
                                        options=TALL)]
    for r in results:
        text = shown(r)
        assert any(finding in text for finding in ("not independent", "Along ", "|∂y/∂x|")), r
        for tex in markdown.maths(r._repr_mimebundle_()["text/markdown"]):
            assert latex.tex_problems(tex) == [], tex


def test_a_pattern_over_the_budget_is_refused_or_held_sparsely_not_built():
    x = torch.randn(100_000, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(x), x, memory_budget=2**30)
    with pytest.raises(VJPUsageError, match="dependency pattern"):
        r.dependency("x")  # 10^5 × 10^5 bools: 10 GB
    d = dependency(torch.sin(x), x, memory_budget=2**30)  # issue 20: held sparsely instead
    assert d.pattern.layout == torch.sparse_csr and d.pattern.shape == (100_000, 100_000)
    assert d.kind == "independent" and d.pattern.values().numel() == 100_000


def test_witnesses_name_their_axis():
    y = torch.randn(3, 5, requires_grad=True)
    d = vjp_magic.differentiate(torch.cumsum(y, 1), y).dependency("x", 1, 1)
    assert (d.kind, d.witness, d.describe("s", "y")) == ("lower-triangular", (1, 0),
                                                          "s[:, 1] ← y[:, 0]")


def test_a_proved_diagonal_keeps_every_entry_whatever_the_seed():
    """A probe weight of exactly 0 hid its entry: at this seed, torch.rand drew the one value
    that became 0, and entry 44,337 of sin(x)'s diagonal went missing (nnz 99,999) while the
    verdict said "independent, proved". Every weight is now ±(1 to 2), never 0."""
    x = torch.randn(100_000, requires_grad=True)
    d = dependency(torch.sin(x), x, memory_budget=2**30, seed=3606933947607364010)
    assert d.kind == "independent" and d.pattern.values().numel() == 100_000


def test_set_probe_values_are_never_near_zero():
    from vjp_magic.core.probes import set_probe_values
    like = torch.empty(100_000)
    for seed in (3606933947607364010, 1, 2):
        v = set_probe_values(like, seed, "dependency").abs()
        assert float(v.min()) >= 1 and float(v.max()) <= 2
