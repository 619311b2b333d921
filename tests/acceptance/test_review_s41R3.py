"""Review, session 41 (R3): issue 23 as a practitioner would try it, on models the issue does not
name, and what every reader sees of the results.

Part A: dependency verdicts on recurrent cells (batch second), depthwise and grouped
``padding='same'`` convolutions, GroupNorm / InstanceNorm in train and eval, attention with a
key padding mask, rotary positions under a causal mask, a local attention window, top-k routing,
packed sequences, a scatter_reduce GNN with isolated nodes and directed messages, a leak through
a running statistic, a leak switched on at some inputs only, and float32 underflow; then
per-sample gradients of models with tied, frozen and parametrised weights, buffers, a model
called twice and a batch that is not the first axis.
Part B: the displays of those results (the numbers of the text equal the tensors of ``r``, the
code shown runs and reproduces them).

Expected patterns come from ``torch.autograd.functional.jacobian`` in float64, expected kinds and
blocks from how the models are built (mathematics), per-sample gradients from a loop of
``backward`` calls, one per sample (never from the code under test). Strict xfails are findings
(``R3-n`` in their reasons).
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import vjp_magic

D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(*shape, seed: int = 0, dtype=D) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=_gen(seed))


def _true_pattern(f, x, out_axis: int, in_axis: int) -> torch.Tensor:
    """[i, j]: output index i along out_axis reads input index j along in_axis (torch's J)."""
    jac = torch.autograd.functional.jacobian(f, x.detach())
    out_dims = jac.dim() - x.dim()
    jac = jac.movedim(out_axis, 0).movedim(out_dims + in_axis, 1)
    return (jac != 0).flatten(2).any(2)


def _verdict(f, x, out_axis: int = 0, in_axis: int = 0):
    leaf = x.detach().clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, out_axis, in_axis, seed=0)
    assert leaf.grad is None
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    return d, pattern, _true_pattern(f, x, out_axis, in_axis)


# ============================================================================================
# Part A.1: verdicts that held (regression guards)
# ============================================================================================

def _models():
    torch.manual_seed(0)
    gru, cell = nn.GRU(3, 4).double(), nn.GRUCell(3, 4).double()
    dw = nn.Conv1d(4, 4, 3, padding="same", groups=4).double()
    grouped = nn.Conv1d(6, 6, 3, padding="same", groups=3).double()
    gn = nn.GroupNorm(2, 6).double()
    inst = nn.InstanceNorm1d(4, affine=True, track_running_stats=True).double()

    def cell_run(x):  # (T, B, F): the cell stepped by hand, batch second
        h, out = torch.zeros(x.shape[1], 4, dtype=x.dtype), []
        for t in range(x.shape[0]):
            h = cell(x[t], h)
            out.append(h)
        return torch.stack(out)

    def inst_in(mode):
        def f(x):
            inst.train(mode == "train")
            return inst(x)
        return f

    seq, chan = _x(6, 5, 3), _x(2, 6, 12)
    # name: (f, x, out_axis, in_axis, kind, blocks or offsets)
    return {
        "gru-time": (lambda x: gru(x)[0], seq, 0, 0, "lower-triangular", (-5, 0)),
        "gru-batch": (lambda x: gru(x)[0], seq, 1, 1, "independent", None),
        "grucell-time": (cell_run, seq, 0, 0, "lower-triangular", (-5, 0)),
        "depthwise-length": (dw, chan[:, :4], 2, 2, "band", (-1, 1)),
        "depthwise-channel": (dw, chan[:, :4], 1, 1, "independent", None),
        "grouped-channel": (grouped, chan, 1, 1, "block-diagonal", (2, 2, 2)),
        "groupnorm-channel": (gn, _x(3, 6, 5), 1, 1, "block-diagonal", (3, 3)),
        "groupnorm-batch": (gn, _x(3, 6, 5), 0, 0, "independent", None),
        "instancenorm-train-batch": (inst_in("train"), _x(5, 4, 6), 0, 0, "independent", None),
        "instancenorm-eval-batch": (inst_in("eval"), _x(5, 4, 6), 0, 0, "independent", None),
        "instancenorm-train-length": (inst_in("train"), _x(5, 4, 6), 2, 2, "dense", None),
        "instancenorm-eval-length": (inst_in("eval"), _x(5, 4, 6), 2, 2, "independent", None),
        # flattened features: the groups become blocks of (channels per group) × length
        "groupnorm-flattened": (lambda x: gn(x.view(3, 6, 5)).flatten(1), _x(3, 30), 1, 1,
                                "block-diagonal", (15, 15)),
        "instancenorm-flattened": (lambda x: F.instance_norm(x.view(3, 4, 6)).flatten(1),
                                   _x(3, 24), 1, 1, "block-diagonal", (6, 6, 6, 6)),
        "layernorm-tokens-flattened": (lambda x: F.layer_norm(x.view(2, 5, 4), (4,)).flatten(1),
                                       _x(2, 20), 1, 1, "block-diagonal", (4,) * 5),
    }


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
def test_practitioner_layer_verdicts_are_the_jacobians(name):
    f, x, out_axis, in_axis, kind, shape = MODELS[name]
    d, pattern, truth = _verdict(f, x, out_axis, in_axis)
    assert torch.equal(pattern, truth), name
    assert d.kind == kind, (name, d)
    if kind.startswith("block"):
        assert tuple(d.blocks) == shape, d
    elif kind in ("band", "lower-triangular"):
        assert tuple(d.offsets) == shape, d
    if d.witness is not None:  # a witness is a real dependence
        assert bool(truth[d.witness]), d


def _rope(x):
    """Rotary position embedding over (B, T, C): pairs of features turned by angle t·θ_k."""
    t, c = x.shape[1], x.shape[2]
    angle = torch.arange(t, dtype=x.dtype)[:, None] / 10000 ** (
        torch.arange(0, c, 2, dtype=x.dtype) / c)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)


def _rope_causal(x):
    t = x.shape[1]
    scores = _rope(x) @ _rope(x).transpose(1, 2) / 2
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ x


def _local_window(x):
    """Relative-position scores (−|i − j|) over a window of ±1: a band of half-width 1."""
    i = torch.arange(x.shape[1])
    rel = (i[None, :] - i[:, None]).abs().to(x.dtype)
    scores = (x @ x.transpose(1, 2) - rel).masked_fill(rel > 1, float("-inf"))
    return scores.softmax(-1) @ x


ATTENTION = {
    "rope-causal-sequence": (_rope_causal, _x(2, 5, 4), 1, 1, "lower-triangular", (-4, 0)),
    "rope-causal-batch": (_rope_causal, _x(2, 5, 4), 0, 0, "independent", None),
    "local-window-sequence": (_local_window, _x(2, 7, 3), 1, 1, "band", (-1, 1)),
}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_position_terms_give_the_verdict_of_their_mask(name):
    f, x, out_axis, in_axis, kind, offsets = ATTENTION[name]
    d, pattern, truth = _verdict(f, x, out_axis, in_axis)
    assert torch.equal(pattern, truth)
    assert d.kind == kind, d
    if offsets is not None:
        assert tuple(d.offsets) == offsets, d


def test_key_padding_mask_pattern_reads_no_padded_key():
    """One sample, the last two positions padding: every query reads keys 0-3, a padded
    position also reads itself (through its query), no one else reads a padded key."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, batch_first=True).double()
    mask = torch.tensor([[False] * 4 + [True] * 2])

    def f(x):
        return mha(x, x, x, key_padding_mask=mask, need_weights=False)[0]
    d, pattern, truth = _verdict(f, _x(1, 6, 4), 1, 1)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:, :4] = True
    expected[4, 4] = expected[5, 5] = True
    assert torch.equal(truth, expected) and torch.equal(pattern, expected)
    assert d.witness is None or bool(expected[d.witness])


def _moe(x, gate, experts):
    """Top-2 of 3 experts per token, chosen from the token's own data: no token reads another."""
    weights = (x @ gate).softmax(-1)
    top, index = weights.topk(2, -1)
    return sum((top * (index == e)).sum(-1, keepdim=True) * experts[e](x) for e in range(3))


def test_top_k_routing_on_the_data_keeps_tokens_apart():
    torch.manual_seed(0)
    gate, experts = torch.randn(4, 3, dtype=D), [nn.Linear(4, 4).double() for _ in range(3)]
    d, pattern, truth = _verdict(lambda x: _moe(x, gate, experts), _x(8, 4))
    assert torch.equal(pattern, truth) and d.kind == "independent", d


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_sequences_keep_samples_apart(bidirectional):
    """pack_padded_sequence → GRU → pad_packed_sequence, lengths 5, 3, 1, batch second."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    gru, lengths = nn.GRU(3, 4, bidirectional=bidirectional).double(), torch.tensor([5, 3, 1])

    def f(x):
        out, _ = gru(pack_padded_sequence(x, lengths))
        return pad_packed_sequence(out, total_length=5)[0]
    d, pattern, truth = _verdict(f, _x(5, 3, 3), 1, 1)
    assert torch.equal(pattern, truth) and d.kind == "independent", d
    d, pattern, truth = _verdict(f, _x(5, 3, 3), 0, 0)
    assert torch.equal(pattern, truth)
    assert d.kind == ("dense" if bidirectional else "lower-triangular"), d


class _LeakyRunningMean(nn.Module):
    """A hand-written normaliser that forgot ``.detach()`` on its running mean, used in the
    same call: every sample reads the whole batch in training, none in eval."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running", torch.zeros(3, dtype=D))

    def forward(self, x):
        if self.training:
            self.running = 0.9 * self.running + 0.1 * x.mean(0)
        return x - self.running


@pytest.mark.parametrize("mode", ["eval-without-running-stats", "train-cumulative", "eval"])
def test_batchnorm_leaks_where_it_uses_the_batchs_statistics(mode):
    """track_running_stats=False uses the batch's statistics in eval too (a classic leak)."""
    bn = {"eval-without-running-stats": nn.BatchNorm1d(3, track_running_stats=False).eval(),
          "train-cumulative": nn.BatchNorm1d(3, momentum=None).train(),
          "eval": nn.BatchNorm1d(3).eval()}[mode].double()
    d, pattern, truth = _verdict(bn, _x(6, 3))
    assert torch.equal(pattern, truth)
    assert d.kind == ("independent" if mode == "eval" else "dense"), d


def test_a_leak_through_a_running_statistic_is_dense_in_training_only():
    m = _LeakyRunningMean()
    d, pattern, truth = _verdict(m, _x(6, 3))
    assert torch.equal(pattern, truth) and d.kind == "dense" and bool(truth[d.witness])
    m.eval()
    m.running = m.running.detach()
    d, pattern, truth = _verdict(m, _x(6, 3, seed=1))
    assert torch.equal(pattern, truth) and d.kind == "independent", d


# ============================================================================================
# Part A.2: a GNN batch with directed messages (scatter_reduce, isolated nodes)
# ============================================================================================

# Graph A: nodes 0-2, a directed ring 0→1→2→0; graph B: node 3 alone; graph C: nodes 4-7, a
# ring 4→5→6→4 and node 7 isolated. Node i's update reads itself and the node sending to it.
RINGS = [(0, 1), (1, 2), (2, 0), (4, 5), (5, 6), (6, 4)]
PATHS = [(0, 1), (1, 0), (1, 2), (2, 1), (4, 5), (5, 4), (5, 6), (6, 5)]  # undirected 0-1-2
GRAPH_OF = [0, 0, 0, 1, 2, 2, 2, 2]


def _gnn(edges, reduce):
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    src, dst = torch.tensor(edges).T

    def f(x):
        messages = torch.tanh(lin(x))[src]
        agg = torch.zeros(8, 3, dtype=x.dtype).scatter_reduce(
            0, dst[:, None].expand(-1, 3), messages, reduce=reduce, include_self=False)
        return x + agg
    return f


@pytest.mark.parametrize("reduce", ["sum", "amax", "mean"])
@pytest.mark.parametrize("edges", [RINGS, RINGS + [(1, 6)], RINGS + [(6, 1)]],
                         ids=["clean", "leak-forward", "leak-backward"])
def test_a_directed_gnn_pattern_is_exact(edges, reduce):
    d, pattern, truth = _verdict(_gnn(edges, reduce), _x(8, 3))
    assert torch.equal(pattern, truth)


# Fixed (s41 F2): was R3-1 - later reads are exceptions only to full causal triangles, and
# blocks split at every free cut beat a band or a reading with exceptions
@pytest.mark.parametrize("edges", [RINGS, PATHS], ids=["directed-rings", "undirected-paths"])
@pytest.mark.parametrize("reduce", ["sum", "amax", "mean"])
def test_a_clean_gnn_batch_is_block_diagonal(reduce, edges):
    d, pattern, truth = _verdict(_gnn(edges, reduce), _x(8, 3))
    assert d.kind == "block-diagonal", d
    assert tuple(d.blocks) == (3, 1, 3, 1) and list(d.exceptions()) == [], d


def _crosses(edge) -> bool:
    return GRAPH_OF[edge[0]] != GRAPH_OF[edge[1]]


# Fixed (s41 F2): was R3-2 - the crossing edge is the one exception and the witness
@pytest.mark.parametrize("edges", [RINGS, PATHS], ids=["directed-rings", "undirected-paths"])
@pytest.mark.parametrize("edge", [(1, 6), (6, 1)], ids=["A-to-C", "C-to-A"])
def test_a_leak_between_graphs_is_the_witness(edge, edges):
    d, pattern, truth = _verdict(_gnn(edges + [edge], "sum"), _x(8, 3))
    assert d.witness is not None and bool(truth[d.witness]), d
    assert _crosses(d.witness), d
    assert d.witness == (edge[1], edge[0]), d


def test_the_crossing_edge_is_among_the_exceptions():
    d, _, _ = _verdict(_gnn(RINGS + [(1, 6)], "sum"), _x(8, 3))
    assert (6, 1) in list(d.exceptions()), d


# ============================================================================================
# Part A.3: a leak at some inputs only; "proved" against "observed"; underflow
# ============================================================================================

def _gated(x):
    """Sample i mixes in sample i − 1 only where its feature 0 exceeds 1 (a data gate)."""
    gate = (x[:, :1] > 1.0).to(x.dtype)
    return x + gate * x.roll(1, 0)


def _gated_relu(x):
    return x + torch.relu(x[:, :1] - 1.0) * x.roll(1, 0)


def _gate_x(open_rows):
    x = _x(8, 3)
    x[:, 0] = 0.0
    x[list(open_rows), 0] = 2.0
    return x


@pytest.mark.parametrize("f", [_gated, _gated_relu], ids=["mask", "relu"])
def test_a_leak_open_at_one_sample_is_found_with_its_witness(f):
    d, pattern, truth = _verdict(f, _gate_x([3]))
    assert torch.equal(pattern, truth)
    assert d.kind != "independent" and d.witness == (3, 2), d


@pytest.mark.parametrize("f", [_gated, _gated_relu], ids=["mask", "relu"])
def test_a_leak_closed_at_this_x_is_independent_here(f):
    d, pattern, truth = _verdict(f, _gate_x([]))
    assert torch.equal(pattern, truth) and d.kind == "independent", d
    other = _gate_x([5])  # the premise: the same f leaks at another x
    assert bool(_true_pattern(f, other, 0, 0)[5, 4])


# Fixed (28de2bb): test_a_verdict_resting_on_a_closed_gate_is_not_proved - was R3-3
def test_a_verdict_resting_on_a_closed_gate_is_not_proved():
    d, _, _ = _verdict(_gated, _gate_x([]))
    assert d.kind == "independent"
    assert d.evidence != "proved" or tuple(d.conditional_on), d


def _slow_rnn(dtype):
    torch.manual_seed(1)
    rnn = nn.RNN(2, 3).to(dtype)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.02)  # J[t, s] shrinks ~ 0.02^(t-s): below float32's tiny
    return lambda x: rnn(x)[0]


def test_an_rnn_whose_old_steps_underflow_says_so_and_float64_is_causal():
    x = _x(40, 1, 2, dtype=torch.float32)
    d32, _, _ = _verdict(_slow_rnn(torch.float32), x)
    assert d32.note and "underflow" in d32.note and "float64" in d32.note, d32
    d64, pattern, truth = _verdict(_slow_rnn(D), x.double())
    assert torch.equal(pattern, truth)
    assert d64.kind == "lower-triangular" and tuple(d64.offsets) == (-39, 0), d64
    assert not d64.note or "underflow" not in d64.note, d64


# Fixed (28de2bb): test_a_band_resting_on_gates_is_not_proved_for_every_x - was R3-3
def test_a_band_resting_on_gates_is_not_proved_for_every_x():
    d, _, _ = _verdict(_gated, _gate_x([3]))
    assert d.kind == "band" and tuple(d.offsets) == (-1, 0), d
    assert bool(_true_pattern(_gated, _gate_x([0]), 0, 0)[0, 7])  # premise
    assert d.evidence != "proved" or tuple(d.conditional_on), d


# ============================================================================================
# Part A.4: per-sample gradients against a loop of backward calls, one per sample
# ============================================================================================

def _loop_reference(model, losses_fn, batch: int) -> dict:
    """name → (B, *shape): sample b's loss backward alone, trainable parameters only."""
    rows = {n: [] for n, p in model.named_parameters() if p.requires_grad}
    for b in range(batch):
        model.zero_grad(set_to_none=True)
        losses_fn()[b].backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                grad = torch.zeros_like(p) if p.grad is None else p.grad.to_dense()
                rows[n].append(grad.clone())
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(v) for n, v in rows.items()}


class _Tied(nn.Module):
    """A language-model head tied to its embedding."""

    def __init__(self):
        super().__init__()
        self.emb, self.h = nn.Embedding(7, 4), nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, t):
        return self.out(torch.tanh(self.h(self.emb(t)).mean(1)))


def _per_sample_cases():
    torch.manual_seed(0)
    b = 5
    tokens, classes = torch.randint(0, 7, (b, 3)), torch.randint(0, 2, (b,))
    xs, xa, xb = _x(b, 3), _x(b, 3, seed=1), _x(b, 3, seed=2)
    tied = _Tied().double()
    frozen = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    frozen[0].weight.requires_grad_(False)
    buffers = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(),
                            nn.Linear(4, 2)).double().eval()
    param = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    parametrizations.weight_norm(param[0])
    parametrizations.orthogonal(param[2])
    shared = nn.Linear(3, 3).double()
    twice = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double()
    gru, seq = nn.GRU(3, 4).double(), _x(6, b, 3)
    enc, seq4 = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0).double(), _x(6, b, 4)
    tied_tgt = torch.randint(0, 7, (b,))
    more = _more_per_sample_cases(b, xs, classes)
    return b, more | {
        "tied-embedding": (tied, lambda: F.cross_entropy(tied(tokens), tied_tgt,
                                                         reduction="none")),
        "frozen-weight": (frozen, lambda: F.cross_entropy(frozen(xs), classes,
                                                          reduction="none")),
        "batchnorm-buffers-eval": (buffers, lambda: F.cross_entropy(buffers(xs), classes,
                                                                    reduction="none")),
        "weight-norm-and-orthogonal": (param, lambda: F.cross_entropy(param(xs), classes,
                                                                      reduction="none")),
        "one-layer-applied-twice": (shared, lambda: shared(torch.tanh(shared(xs))).pow(2).sum(1)),
        "siamese-called-twice": (twice, lambda: (twice(xa) - twice(xb)).pow(2).sum(1)),
        "gru-batch-second": (gru, lambda: gru(seq)[0].pow(2).sum((0, 2))),
        "encoder-batch-second": (enc, lambda: enc(seq4).pow(2).sum((0, 2))),
    }


def _more_per_sample_cases(b, xs, classes):
    """Batch-shaped layers: a padding mask, BatchNorm in training, packed sequences, embeddings
    with a padding index, sparse gradients, per-sample bag weights."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    enc, seq = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0).double(), _x(5, b, 4, seed=3)
    pad = torch.zeros(b, 5, dtype=torch.bool)
    pad[1, 3:] = pad[2, 4] = True
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    lstm, lengths = nn.LSTM(3, 4).double(), torch.tensor([5, 4, 2, 2, 1])

    def packed():
        out, _ = lstm(pack_padded_sequence(_x(5, b, 3, seed=4), lengths))
        return pad_packed_sequence(out, total_length=5)[0].pow(2).sum((0, 2))
    tok = torch.tensor([[0, 1, 2], [0, 0, 3], [4, 5, 0], [1, 1, 1], [2, 0, 5]])
    emb_pad = nn.Sequential(nn.Embedding(6, 3, padding_idx=0), nn.Flatten(),
                            nn.Linear(9, 2)).double()
    emb_sparse = nn.Sequential(nn.Embedding(6, 3, sparse=True), nn.Flatten(),
                               nn.Linear(9, 2)).double()
    bag, weights = nn.EmbeddingBag(6, 3, mode="sum").double(), torch.rand(b, 3, dtype=D)
    return {
        "encoder-padding-mask-batch-second": (enc, lambda: enc(
            seq, src_key_padding_mask=pad).pow(2).sum((0, 2))),
        "batchnorm-training": (bn, lambda: F.cross_entropy(bn(xs), classes, reduction="none")),
        "lstm-packed": (lstm, packed),
        "embedding-padding-idx": (emb_pad, lambda: F.cross_entropy(emb_pad(tok), classes,
                                                                   reduction="none")),
        "embedding-sparse-grad": (emb_sparse, lambda: F.cross_entropy(
            emb_sparse(tok), classes, reduction="none")),
        "embedding-bag-sample-weights": (bag, lambda: bag(
            tok, per_sample_weights=weights).pow(2).sum(1)),
    }


@pytest.mark.parametrize("given", ["callable", "tensor"])
@pytest.mark.parametrize("name", list(_per_sample_cases()[1]))
def test_per_sample_gradients_of_practitioner_models_are_the_loops(name, given):
    batch, cases = _per_sample_cases()
    model, losses = cases[name]
    r = vjp_magic.differentiate(losses if given == "callable" else losses(), model, names="m")
    expected = _loop_reference(model, losses, batch)
    assert set(r.derivatives) == {f"m.{n}" for n in expected}, sorted(r.derivatives)
    for n, g in expected.items():
        torch.testing.assert_close(r.derivatives[f"m.{n}"], g, rtol=1e-9, atol=1e-11)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_reduced_loss_gives_the_gradient_backward_gives(reduction):
    """A scalar loss: r.derivatives equals .grad after loss.backward() (mean = sum / B)."""
    batch, cases = _per_sample_cases()
    model, _ = cases["tied-embedding"]
    torch.manual_seed(3)
    tokens, tgt = torch.randint(0, 7, (batch, 3)), torch.randint(0, 7, (batch,))

    def loss():
        return F.cross_entropy(model(tokens), tgt, reduction=reduction)
    r = vjp_magic.differentiate(loss, model, names="m")
    model.zero_grad(set_to_none=True)
    loss().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(r.derivatives[f"m.{n}"], p.grad, rtol=1e-9, atol=1e-12)
    per_sample = _loop_reference(model, lambda: F.cross_entropy(
        model(tokens), tgt, reduction="none"), batch)["emb.weight"].sum(0)
    scale = batch if reduction == "mean" else 1
    torch.testing.assert_close(r.derivatives["m.emb.weight"] * scale, per_sample)


# ============================================================================================
# Part A.5 / B: --wrt net on a model with tied, frozen, normalised and parametrised weights
# ============================================================================================

NET = '''import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
torch.manual_seed(0)
class Net(nn.Module):
    def __init__(s, parametrised):
        super().__init__()
        s.emb = nn.Embedding(11, 6)
        s.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh())
                                  for _ in range(4)])
        s.frozen = nn.Linear(6, 6); s.frozen.requires_grad_(False)
        s.proj = nn.Linear(6, 6)
        if parametrised:
            parametrizations.weight_norm(s.proj)
        s.head = nn.Linear(6, 11, bias=False); s.head.weight = s.emb.weight
    def forward(s, t):
        h = s.emb(t).mean(1)
        for b in s.blocks:
            h = b(h)
        return s.head(s.proj(s.frozen(h)))
net = Net({parametrised}).eval()
tok = torch.randint(0, 11, (6, 3)); tgt = torch.randint(0, 11, (6,))
'''
NET_CELL = "%%vjp --wrt net\nlosses = F.cross_entropy(net(tok), tgt, reduction='none')"
ROW = re.compile(r"^\s*((?:net)?\.?[\w.\[\]…]+) \[\s*(\d+(?: × \d+)*)?\s+([-\d.e+]+)"
                 r"(?:\s+(.*))?\]\s*$")


def _bundle(r) -> dict:
    data = r._repr_mimebundle_()
    return data[0] if isinstance(data, tuple) else data


def _dotted(shown: str) -> str:
    """'.blocks[3][0].bias' or 'net.blocks[3][0].bias' → 'blocks.3.0.bias'."""
    return re.sub(r"\[(\d+)\]", r".\1", shown).removeprefix("net").lstrip(".")


def _shortened(plain: str) -> dict:
    """A name the table shortened to fit (``net.proj…original1``) → the name in full, as the
    caption beneath says it."""
    said = re.search(r"Shortened to fit the width: (.*?)\.(?:\s|$)", re.sub(r"\s+", " ", plain))
    pairs = said.group(1).split("; ") if said else []
    return dict(pair.split(" is ") for pair in pairs)


def _table(plain: str) -> dict:
    """dotted name → (shape text or None, norm, the rest) of the table's rows shown (a name
    shortened to fit read in full from the caption)."""
    rows, full = {}, _shortened(plain)
    for line in plain.splitlines():
        m = ROW.match(line)
        if m and not line.lstrip().startswith(("losses", ":")):
            name = full[m.group(1)] if "…" in m.group(1) else m.group(1)
            rows[_dotted(name)] = (m.group(2), float(m.group(3)), m.group(4))
    return rows


def _net(ip, run_ok, parametrised):
    run_ok(NET.format(parametrised=parametrised))
    ns = ip.user_ns
    r = run_ok(NET_CELL)
    net = ns["net"]
    reference = _loop_reference(net, lambda: F.cross_entropy(net(ns["tok"]), ns["tgt"],
                                                             reduction="none"), 6)
    return r, reference


@pytest.mark.parametrize("parametrised", [False, True], ids=["plain", "weight-norm"])
def test_wrt_net_values_names_and_table_norms_are_the_loops(ip, run_ok, parametrised):
    r, reference = _net(ip, run_ok, parametrised)
    assert set(r.derivatives) == {f"net.{n}" for n in reference}  # tied once, frozen out
    for n, g in reference.items():
        torch.testing.assert_close(r.derivatives[f"net.{n}"], g, rtol=1e-4, atol=1e-6)
    plain = _bundle(r)["text/plain"]
    rows = _table(plain)
    assert len(rows) >= 4, plain
    for name, (_, norm, _) in rows.items():
        assert norm == pytest.approx(float(reference[name].norm()), rel=6e-3), (name, plain)
    flat = re.sub(r"\s+", " ", plain)
    assert "net.frozen.weight, net.frozen.bias" in flat and "head.weight" not in flat
    assert f"From {len(reference)} tensors " in flat
    assert f"({sum(g[0].numel() for g in reference.values())} entries)" in flat


def _maths_table(text: str) -> dict:
    """dotted name → cells after the name, of the rows of the first array environment (a name
    shortened to fit read in full from the caption)."""
    body = re.search(r"\\begin\{array\}\{[^}]*\}(.*?)\\end\{array\}", text, re.S).group(1)
    said = re.sub(r"\$|`|\\texttt\{|\}|\\allowbreak\\mkern-10mu\\;\\;", "", text)
    rows, full = {}, _shortened(said)
    for row in body.split("\\\\"):
        cells = [cell.strip() for cell in row.replace("\\hline", "").split("&")]
        m = re.fullmatch(r"\\mathtt\{(.*)\}", cells[0])
        name = m and m.group(1).replace("{.}", ".").replace("{\\ldots}", "…")
        if m and _dotted(name):  # (not the header's 'net')
            rows[_dotted(full[name] if "…" in name else name)] = cells[1:]
    return rows


@pytest.mark.parametrize("parametrised", [False, True], ids=["plain", "weight-norm"])
def test_wrt_net_markdown_and_latex_tables_say_what_plain_says(ip, run_ok, parametrised):
    r, reference = _net(ip, run_ok, parametrised)
    bundle = _bundle(r)
    plain_rows = _table(bundle["text/plain"])
    for fmt in ("text/markdown", "text/latex"):
        rows = _maths_table(bundle[fmt])
        assert set(rows) == set(plain_rows), (fmt, sorted(rows), sorted(plain_rows))
        for name, cells in rows.items():
            norm = float(cells[-1])
            assert norm == pytest.approx(float(reference[name].norm()), rel=6e-3), (fmt, name)
            if plain_rows[name][0] is not None:
                assert cells[0] == plain_rows[name][0].replace("×", "\\times"), (fmt, cells)


@pytest.mark.parametrize("parametrised", [False, True], ids=["plain", "weight-norm"])
def test_wrt_net_fits_one_screen(ip, run_ok, parametrised):
    r, _ = _net(ip, run_ok, parametrised)
    bundle = _bundle(r)
    lines = bundle["text/plain"].splitlines()
    assert len(lines) <= 35 and max(map(len, lines)) <= 100, bundle["text/plain"]
    assert all(len(v) < 20_000 for v in bundle.values())


# Fixed (s42 D1): was R3-4 - one long parameter name took every row's shape (its name is
# shortened to fit, said in full beneath)
def test_a_parametrised_layer_does_not_take_every_rows_shape(ip, run_ok):
    r, reference = _net(ip, run_ok, True)
    rows = _table(_bundle(r)["text/plain"])
    assert len(rows) >= 4
    for name, (shape, _, _) in rows.items():
        assert shape == " × ".join(map(str, reference[name].shape[1:])), (name, rows)


def test_a_plain_model_table_gives_the_shapes(ip, run_ok):
    r, reference = _net(ip, run_ok, False)
    rows = _table(_bundle(r)["text/plain"])
    assert rows
    for name, (shape, _, _) in rows.items():
        assert shape == " × ".join(map(str, reference[name].shape[1:])), (name, rows)


# ============================================================================================
# Part B: what every reader sees - the code shown runs and gives r's numbers; the formats
# ============================================================================================

SETUP = '''import torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
src = torch.tensor([0, 1, 2, 4, 5, 6, 1]); dst = torch.tensor([1, 2, 0, 5, 6, 4, 6])
lin = nn.Linear(3, 3)
gn = nn.GroupNorm(2, 4)
cell = nn.GRUCell(3, 4)
class Tied(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb, s.h = nn.Embedding(7, 4), nn.Linear(4, 4)
        s.out = nn.Linear(4, 7, bias=False); s.out.weight = s.emb.weight
    def forward(s, t):
        return s.out(torch.tanh(s.h(s.emb(t)).mean(1)))
tied = Tied()
tok = torch.randint(0, 7, (5, 3)); tgt = torch.randint(0, 7, (5,))
'''
CELLS = {
    "gnn-crossing": "%%vjp\nx = torch.randn(8, 3, requires_grad=True)\n"
                    "m = torch.tanh(lin(x))[src]\ny = x + torch.zeros(8, 3).index_add(0, dst, m)",
    "groupnorm": "%%vjp\nx = torch.randn(3, 4, requires_grad=True)\ny = gn(x)",
    "grucell-batch-second": "%%vjp\nx = torch.randn(4, 2, 3, requires_grad=True)\n"
                            "h = torch.zeros(2, 4)\nfor t in range(4):\n    h = cell(x[t], h)\n"
                            "y = h",
    "per-sample-tied": "%%vjp --wrt tied\n"
                       "losses = F.cross_entropy(tied(tok), tgt, reduction='none')",
    "mean-loss-tied": "%%vjp --wrt tied\nloss = F.cross_entropy(tied(tok), tgt)",
    "rnn-underflow": "%%vjp\ntorch.manual_seed(1)\nrnn = nn.RNN(2, 3)\nwith torch.no_grad():\n"
                     "    rnn.weight_hh_l0.mul_(0.02)\n"
                     "x = torch.randn(40, 1, 2, requires_grad=True)\ny = rnn(x)[0]",
}
FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _shown(ip, run_ok, name):
    run_ok(SETUP)
    r = run_ok(CELLS[name])
    ip.user_ns["r"] = r
    return r, _bundle(r)


def _code_variable(name: str) -> str:
    return "d_" + re.sub(r"\W", "_", name)


@pytest.mark.parametrize("name", list(CELLS))
def test_the_code_shown_runs_after_the_cell_and_gives_r(ip, run_ok, name):
    r, bundle = _shown(ip, run_ok, name)
    blocks = FENCE.findall(bundle["text/markdown"])
    assert len(blocks) == 1, bundle["text/markdown"]
    expected = {k: v.clone() for k, v in r.derivatives.items()}
    run_ok(blocks[0])
    checked = 0
    for input_name, value in expected.items():
        variable = _code_variable(input_name)
        if variable in ip.user_ns:
            got = ip.user_ns[variable]
        elif ".backward()" in blocks[0]:
            got = ip.ev(f"{input_name}.grad")
        else:
            continue
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked >= 1, blocks[0]


def _plain_rows(plain: str):
    """The leading rows of numbers of the first matrix of the plain text (up to a ':' row),
    times its 10^k factor if any."""
    rows, scale = [], 1.0
    for line in plain.splitlines():
        m = re.search(r"(?:10\^(-?\d+) × )?\[([-\d.e\s]+)\]\s*(?:∈.*)?$", line)
        if m and re.fullmatch(r"[-\d.e\s]+", m.group(2)):
            scale = 10.0 ** int(m.group(1)) if m.group(1) else scale
            rows.append([float(v) for v in m.group(2).split()])
        elif rows:
            break
    return torch.tensor(rows, dtype=D) * scale


@pytest.mark.parametrize("name", ["groupnorm", "mean-loss-tied"])
def test_the_first_plain_matrix_is_r_to_four_digits(ip, run_ok, name):
    r, bundle = _shown(ip, run_ok, name)
    shown = _plain_rows(bundle["text/plain"])
    first = next(iter(r.derivatives.values())).detach().double()
    if first.dim() > 2:
        first = first[0]
    assert shown.numel() and shown.shape[1] == first.shape[1], bundle["text/plain"]
    torch.testing.assert_close(shown, first[:len(shown)], rtol=5e-4, atol=1e-12)


def _prose_of_markdown(md: str) -> str:
    md = re.sub(r"```.*?```", "", md, flags=re.S)
    md = re.sub(r"\$\$.*?\$\$", "", md, flags=re.S)
    md = re.sub(r"\$[^$]*\$", "", md)
    return re.sub(r"`[^`]*`", "", md)


@pytest.mark.parametrize("name", list(CELLS))
def test_each_format_keeps_to_its_own_language(ip, run_ok, name):
    _, bundle = _shown(ip, run_ok, name)
    assert set(bundle) >= {"text/plain", "text/markdown", "text/latex"}
    assert "text/html" not in bundle
    prose = _prose_of_markdown(bundle["text/markdown"])
    assert not re.search(r"\\[a-zA-Z]+", prose.replace("<div", "")), prose  # no LaTeX in prose
    latex = bundle["text/latex"]
    assert "`" not in latex and "**" not in latex and "```" not in latex, latex
    plain = bundle["text/plain"]
    assert "$" not in plain and not re.search(r"\\[a-zA-Z]+", plain), plain
    lines = plain.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) <= 40, plain


# Fixed (s41 F2): was R3-2 (as %%vjp shows it)
def test_the_display_of_a_leaky_gnn_batch_names_the_crossing_message(ip, run_ok):
    _, bundle = _shown(ip, run_ok, "gnn-crossing")
    plain = re.sub(r"\s+", " ", bundle["text/plain"])
    assert "y[6] ← x[1]" in plain, plain


# ============================================================================================
# Part A.6: nested tensors (variable-length batches without padding)
# ============================================================================================

def _nested(layout):
    parts = [_x(2, 3, dtype=torch.float32), _x(4, 3, seed=1, dtype=torch.float32)]
    x = torch.nested.nested_tensor(parts, layout=layout, requires_grad=True)
    return x, F.linear(x, _x(2, 3, seed=2, dtype=torch.float32)).sin()


@pytest.mark.parametrize("api", ["dependency", "differentiate"])
def test_a_jagged_nested_batch_gets_a_usage_error(api):
    x, y = _nested(torch.jagged)
    with pytest.raises(vjp_magic.VJPUsageError):
        getattr(vjp_magic, api)(y, x)
    assert x.grad is None


@pytest.mark.parametrize("api", ["dependency", "differentiate"])
def test_a_strided_nested_batch_gets_a_usage_error(api):
    x, y = _nested(torch.strided)
    with pytest.raises(vjp_magic.VJPUsageError):
        getattr(vjp_magic, api)(y, x)


def test_a_strided_nested_cell_gets_a_usage_error(usage_error):
    message = usage_error("%%vjp\nx = torch.nested.nested_tensor([torch.randn(2, 3), "
                          "torch.randn(4, 3)], requires_grad=True)\ny = x.sin()")
    assert "nested" in message.lower()


# -- text/latex of these results compiles (xelatex, nbconvert's packages) and stays on the page
LATEX_PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage{amsmath}\usepackage{amssymb}\usepackage{fontspec}\usepackage{unicode-math}
\usepackage{fancyvrb}
\usepackage{geometry}\geometry{tmargin=1in,bmargin=1in,lmargin=1in,rmargin=1in}
\begin{document}
"""


def _compile(bodies, tmp_path) -> list:
    """xelatex over the bodies; the widths (pt) of the lines that stick out past the margin."""
    source = LATEX_PREAMBLE + "\n\n".join(bodies) + "\n\\end{document}\n"
    (tmp_path / "out.tex").write_text(source)
    run = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "out.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    log = (tmp_path / "out.log").read_text(errors="replace")
    assert run.returncode == 0 and "Missing character" not in log, log[-3000:]
    overfull = re.findall(r"Overfull \\hbox \((\d+\.?\d*)pt too wide\)", log)
    return [float(w) for w in overfull if float(w) > 5.0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xelatex") is None, reason="needs xelatex")
def test_the_latex_of_these_results_compiles_and_fits_the_page(ip, run_ok, tmp_path):
    bodies = [_shown(ip, run_ok, name)[1]["text/latex"] for name in CELLS]
    assert _compile(bodies, tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xelatex") is None, reason="needs xelatex")
# Fixed (s42 D1): was R3-6 - a sentence of code names stuck out 53 pt (no stretch at their
# break points)
@pytest.mark.parametrize("parametrised", [False, True], ids=["plain", "weight-norm"])
def test_the_latex_of_wrt_net_with_a_frozen_layer_fits_the_page(ip, run_ok, tmp_path,
                                                               parametrised):
    body = _bundle(_net(ip, run_ok, parametrised)[0])["text/latex"]
    assert _compile([body], tmp_path) == []


# -- a frozen backbone ----------------------------------------------------------------------
def _frozen_backbone():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).requires_grad_(False)
    head = nn.Linear(4, 2)
    losses = F.cross_entropy(head(backbone(torch.randn(5, 3))), torch.randint(0, 2, (5,)),
                             reduction="none")
    return backbone, head, losses


def test_a_frozen_backbone_named_in_the_cell_gets_its_name_in_the_message(run_ok,
                                                                         usage_error):
    run_ok("from torch import nn\n"
           "backbone = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).requires_grad_(False)")
    message = usage_error("%%vjp --wrt backbone\nlosses = backbone(torch.randn(5, 3)).sum(1)")
    assert "backbone.requires_grad_()" in message, message


def test_a_frozen_module_given_without_a_name_gets_runnable_advice():
    backbone, _, losses = _frozen_backbone()
    with pytest.raises(vjp_magic.VJPUsageError) as info:
        vjp_magic.differentiate(losses, backbone)
    assert "Sequential.requires_grad_()" not in str(info.value), info.value


def test_a_module_given_without_a_name_names_its_parameters_plainly():
    _, head, losses = _frozen_backbone()
    r = vjp_magic.differentiate(losses, head)
    assert list(r.derivatives) == ["weight", "bias"]


# -- strided layers: a rectangular pattern ---------------------------------------------------
def _strided(name):
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 2, 3, stride=2, padding=1).double()
    return {"conv-k3-s2": conv, "avgpool-k2-s2": lambda x: F.avg_pool1d(x, 2)}[name]


@pytest.mark.parametrize("name", ["conv-k3-s2", "avgpool-k2-s2"])
@pytest.mark.parametrize("length", [12, 48])
def test_a_strided_layer_pattern_is_exact(name, length):
    _, pattern, truth = _verdict(_strided(name), _x(1, 2, length), 2, 2)
    assert torch.equal(pattern, truth)


# Fixed (s41 F2): was R3-8 - sparse with its stride and receptive field, at every length
@pytest.mark.parametrize("name", ["conv-k3-s2", "avgpool-k2-s2"])
def test_a_strided_layer_gets_one_kind_at_every_length(name):
    short, _, _ = _verdict(_strided(name), _x(1, 2, 12), 2, 2)
    long, _, _ = _verdict(_strided(name), _x(1, 2, 48), 2, 2)
    assert short.kind == long.kind, (short, long)
    assert short.offsets == long.offsets, (short, long)


def test_the_underflow_note_reaches_every_format(ip, run_ok):
    _, bundle = _shown(ip, run_ok, "rnn-underflow")
    for fmt in ("text/plain", "text/markdown", "text/latex"):
        text = re.sub(r"\s+", " ", bundle[fmt])
        assert "underflow" in text and "float64" in text, (fmt, text)


# -- a parametrisation whose forward updates buffers (spectral_norm's power iteration) --------
def test_spectral_norm_in_training_updates_once_and_gives_the_loops_values():
    import copy
    torch.manual_seed(0)
    model = nn.Linear(3, 3).double()
    parametrizations.spectral_norm(model)
    model.train()
    xs = _x(4, 3)
    plain, reference_model = copy.deepcopy(model), copy.deepcopy(model)
    plain(xs)  # a plain run: one power iteration
    r = vjp_magic.differentiate(lambda: model(xs).pow(2).sum(1), model, names="m")
    for (name, mine), (_, theirs) in zip(model.state_dict().items(),
                                         plain.state_dict().items()):
        assert torch.equal(mine, theirs), name
    losses = reference_model(xs).pow(2).sum(1)  # the one forward; then one backward a sample
    params = dict(reference_model.named_parameters())
    for b in range(4):
        grads = torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
        for (name, _), g in zip(params.items(), grads):
            torch.testing.assert_close(r.derivatives[f"m.{name}"][b], g, rtol=1e-9, atol=1e-12)


WIDE_ROW = re.compile(r"^\s*(net[\w.\[\]]+) \[\s*(\d+(?: × \d+)*)\s+([-\d.e+]+)\s+([-\d.e+]+)"
                      r"\s+\(([\d,]+)\)\]\s*$")


def test_wrt_net_at_width_100_gives_each_largest_entry_and_where_it_is(ip, run_ok):
    run_ok(NET.format(parametrised=False))
    ns = ip.user_ns
    net = ns["net"]
    reference = _loop_reference(net, lambda: F.cross_entropy(net(ns["tok"]), ns["tgt"],
                                                             reduction="none"), 6)
    r = run_ok(NET_CELL.replace("--wrt net", "--wrt net --width 100"))
    plain = _bundle(r)["text/plain"]
    rows = [WIDE_ROW.match(line) for line in plain.splitlines()]
    rows = [m for m in rows if m]
    assert len(rows) >= 6, plain
    for m in rows:
        g = reference[_dotted(m.group(1))]
        assert m.group(2) == " × ".join(map(str, g.shape[1:])), m.group(0)
        assert float(m.group(3)) == pytest.approx(float(g.norm()), rel=6e-3), m.group(0)
        largest = float(g.abs().max())
        assert float(m.group(4)) == pytest.approx(largest, rel=6e-3), m.group(0)
        at = tuple(int(i) - 1 for i in m.group(5).split(","))  # counted from 1
        assert float(g[at].abs()) == pytest.approx(largest, rel=1e-6), (m.group(0), at)
    assert max(map(len, plain.splitlines())) <= 100


@pytest.mark.parametrize("flags", ["", " --width 100"])
@pytest.mark.parametrize("parametrised", [False, True], ids=["plain", "weight-norm"])
def test_wrt_net_rows_shown_and_rows_said_left_out_add_up(ip, run_ok, parametrised, flags):
    run_ok(NET.format(parametrised=parametrised))
    r = run_ok(NET_CELL.replace("--wrt net", "--wrt net" + flags))
    plain = _bundle(r)["text/plain"]
    flat = re.sub(r"\s+", " ", plain)
    total = int(re.search(r"From (\d+) tensors", flat).group(1))
    left = re.search(r"(\d+) of the table's rows", flat)
    shown = len(_table(plain)) or len([ln for ln in plain.splitlines() if WIDE_ROW.match(ln)])
    assert shown + (int(left.group(1)) if left else 0) == total == len(r.derivatives), plain
