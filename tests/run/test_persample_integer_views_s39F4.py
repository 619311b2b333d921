"""Integer per-sample data (targets, token ids, masks) read through the common views,
indexing and gathers that keep row b on row b (``t[:, None]``, ``t.unsqueeze(1)``,
``logp.gather(1, t[:, None])``, ``F.one_hot(t).float()``, ``(ids != pad)[:, :, None]``,
``ids.reshape(B, -1)``) keep the vectorised per-sample replay; those moving rows (a roll,
a flip, a reshape across rows, a gather along the batch) are refused or exact.

Expected per-sample gradients: the float64 Jacobian of the B per-sample losses of the batch
function with respect to the parameters (``torch.autograd.functional.jacobian``; row b is
sample b's gradient).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted
from vjp_magic.run import integer_rows, persample
from vjp_magic.run.record import recording, tensors_in

B, PAD = 32, 0  # from 32 samples the per-sample path is tried


TARGETS = {  # (logits (B, 3), targets (B,)) -> per-sample losses (B,)
    "gather t[:, None]": lambda z, t: -F.log_softmax(z, 1).gather(1, t[:, None]).squeeze(1),
    "gather t.unsqueeze(1)": lambda z, t: -F.log_softmax(z, 1).gather(1, t.unsqueeze(1))[:, 0],
    "gather t.view(-1, 1)": lambda z, t: -F.log_softmax(z, 1).gather(1, t.view(-1, 1)).sum(1),
    "take_along_dim": lambda z, t: -torch.take_along_dim(
        F.log_softmax(z, 1), t[:, None], 1).squeeze(1),
    "one_hot(t).float()": lambda z, t: -(F.one_hot(t).float() * F.log_softmax(z, 1)).sum(1),
    "t.reshape(B, -1) as index": lambda z, t: -F.log_softmax(z, -1).gather(
        -1, t.reshape(B, -1)).squeeze(-1),
    "cross_entropy after t[:, None][:, 0]": lambda z, t: F.cross_entropy(
        z, t[:, None][:, 0], reduction="none"),
}

UNSOUND = {  # reading another sample's target
    "t.roll(1, 0)[:, None]": lambda z, t: -F.log_softmax(z, 1).gather(
        1, t.roll(1, 0)[:, None]).squeeze(1),
    "t.flip(0).unsqueeze(1)": lambda z, t: -F.log_softmax(z, 1).gather(
        1, t.flip(0).unsqueeze(1)).squeeze(1),
    "t.reshape(2, -1) (B even)": lambda z, t: -F.log_softmax(z, 1).gather(
        1, t.reshape(2, -1).T.reshape(B, 1)).squeeze(1),
    "gather along dim 0": lambda z, t: -F.log_softmax(z, 1).gather(0, t[:, None]).squeeze(1),
    "t[1:] (a slice along the batch)": lambda z, t: -F.log_softmax(z, 1).gather(
        1, torch.cat([t[1:], t[:1]])[:, None]).squeeze(1),
    "t.view(B, 1)[::-1]-like index of axis 0": lambda z, t: -F.log_softmax(z, 1).gather(
        1, t[torch.arange(B - 1, -1, -1)][:, None]).squeeze(1),
}


class _Targets(nn.Module):
    """A linear map scaled through ``exp`` (no per-layer rule: the vmap replay is tried),
    the losses read targets through ``loss``."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.f = loss, nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3))

    def forward(self, x, t):
        return self.loss(torch.tanh(self.f(x)) * self.scale.exp(), t)


MASKS = {  # ids (B, 2, 3) -> (mask (B, 6, 1), ids (B, 6))
    "(ids != pad)[:, :, None], ids.reshape(B, -1)": lambda ids: (
        (ids.reshape(B, -1) != PAD)[:, :, None], ids.reshape(B, -1)),
    "mask.unsqueeze(-1), ids.flatten(1)": lambda ids: (
        ids.flatten(1).ne(PAD).unsqueeze(-1), ids.flatten(1)),
    "mask[..., None] of ids.view(B, 6)": lambda ids: (
        (ids.view(B, 6) != PAD)[..., None], ids.view(B, 6)),
}


class _Tokens(nn.Module):
    """Token ids through an Embedding, padding masked out, mean over the tokens kept."""

    def __init__(self, views):
        super().__init__()
        self.views, self.e, self.o = views, nn.Embedding(10, 5), nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, ids, t):
        mask, flat = self.views(ids)
        h = (self.e(flat) * mask.float()).sum(1) / mask.float().sum(1).clamp(min=1)
        return F.cross_entropy(self.o(torch.tanh(h * self.scale.exp())), t, reduction="none")


def _data(tokens: bool, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 10, (B, 2, 3), generator=g) if tokens else \
        torch.randn(B, 4, generator=g, dtype=dtype)
    t = torch.randint(0, 3, (B,), generator=g)
    t[0] = 2  # (one_hot's classes: as many as the logits)
    return x, t


def _make(cls, form, dtype):
    torch.manual_seed(0)
    return cls(form).to(dtype)


def _reference(cls, form, x, t) -> dict:
    model = _make(cls, form, torch.float64)
    names, params = zip(*model.named_parameters())
    x = x.double() if x.is_floating_point() else x

    def losses(*values):
        return torch.func.functional_call(model, dict(zip(names, values)), (x, t))

    return dict(zip(names, torch.autograd.functional.jacobian(losses, params)))


def _check(cls, form, dtype, monkeypatch) -> tuple[bool, int]:
    """(whether the vmap replay was tried, the backward passes); asserts the per-sample
    gradients against the float64 Jacobian."""
    model = _make(cls, form, dtype)
    x, t = _data(cls is _Tokens, dtype)
    used = []
    original = persample._vectorised
    monkeypatch.setattr(persample, "_vectorised", lambda *a: used.append(1) or original(*a))
    r, passes = counted(lambda: vjp_magic.differentiate(lambda: model(x, t), model))
    expected = _reference(cls, form, x, t)
    assert set(r.derivatives) == set(expected)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    for k, v in expected.items():
        torch.testing.assert_close(r.derivatives[k].double(), v, atol=atol, rtol=0, msg=k)
    return bool(used), passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", TARGETS)
def test_targets_through_a_row_keeping_view_keep_the_vmap_replay(name, dtype, monkeypatch):
    used, passes = _check(_Targets, TARGETS[name], dtype, monkeypatch)
    assert used and passes <= 16, passes  # not one backward per sample (B = 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", MASKS)
def test_a_padding_mask_through_a_row_keeping_view_keeps_the_vmap_replay(name, dtype,
                                                                         monkeypatch):
    used, passes = _check(_Tokens, MASKS[name], dtype, monkeypatch)
    assert used and passes <= 16, passes


@pytest.mark.parametrize("name", UNSOUND)
def test_targets_moved_across_rows_are_refused_or_exact(name, monkeypatch):
    """A target moved across rows before the live graph reads it is a per-sample constant
    (row b's loss reads it as data: the gradient is exact either way); one moved inside the
    replay (a gather along the batch) is refused."""
    _check(_Targets, UNSOUND[name], torch.float64, monkeypatch)
    if name == "gather along dim 0":
        model = _make(_Targets, UNSOUND[name], torch.float64)
        assert not _proved(model, *_data(False, torch.float64))


def _proved(model, x, t) -> bool:
    """Whether ``samples_apart`` proves the recorded losses' rows apart."""
    params = dict(model.named_parameters())
    with recording() as record:
        losses = model(x, t)
    replay, data = persample.sample_data(record, params, losses)
    samples = persample.per_sample_constants(replay, B, {**params, **data})
    return persample.samples_apart(replay, params, data, samples, B)


T, SRC = torch.arange(2 * B).reshape(B, 2) % 3, torch.randn(B, 3)  # ids (B, 2), floats (B, 3)
KEPT = {  # f(t) whose row b reads only row b of t
    "t[:, None]": lambda t: t[:, None], "t[:, 0]": lambda t: t[:, 0],
    "t[..., None]": lambda t: t[..., None], "t[:, ..., None]": lambda t: t[:, ..., None],
    "t[:, [1, 0]]": lambda t: t[:, [1, 0]], "t.unsqueeze(-1)": lambda t: t.unsqueeze(-1),
    "t.view(B, 2, 1)": lambda t: t.view(B, 2, 1), "t.reshape(B, -1)": lambda t: t.reshape(B, -1),
    "t.flatten(1)": lambda t: t.flatten(1), "t[:, :1].squeeze(1)": lambda t: t[:, :1].squeeze(1),
    "SRC.gather(1, t)": lambda t: SRC.gather(1, t),
    "take_along_dim(SRC, t, -1)": lambda t: torch.take_along_dim(SRC, t, -1),
    "t.clone().contiguous()[:, None]": lambda t: t.clone().contiguous()[:, None],
    # the first index proved the identity on the batch (s40 F2)
    "SRC[torch.arange(B), t[:, 0]]": lambda t: SRC[torch.arange(B), t[:, 0]],
    "SRC[range(B), t[:, 1]]": lambda t: SRC[range(B), t[:, 1]],
    "SRC[torch.arange(B)[:, None], t]": lambda t: SRC[torch.arange(B)[:, None], t],
    "SRC[list(range(B)), :][torch.arange(B), t[:, 0]]": lambda t: SRC[list(range(B)), :][
        torch.arange(B), t[:, 0]],
    "t[torch.arange(B)]": lambda t: t[torch.arange(B)],
    "t[torch.arange(B), 1]": lambda t: t[torch.arange(B), torch.ones(B, dtype=torch.long)],
}
MOVED = {  # f(t) reading other rows of t (or the batch no longer on axis 0)
    "t.roll(1, 0)": lambda t: t.roll(1, 0), "t.flip(0)": lambda t: t.flip(0),
    "t.reshape(2, -1)": lambda t: t.reshape(2, -1),
    "t.T.reshape(B, 2)": lambda t: t.T.reshape(B, 2),
    "t[1:]": lambda t: t[1:], "t[None]": lambda t: t[None],
    "t.unsqueeze(0)": lambda t: t.unsqueeze(0),
    "t[reversed rows]": lambda t: t[torch.arange(B - 1, -1, -1)],
    "t[:, 0][t[:, 1]]": lambda t: t[:, 0][t[:, 1]],
    "SRC[:, t[:, 0]]": lambda t: SRC[:, t[:, 0]], "t.gather(0, t)": lambda t: t.gather(0, t),
    "take_along_dim(t, t, 0)": lambda t: torch.take_along_dim(t, t, 0),
    # an identity first index beside a target broadcast across the batch: (B, 1) with (B,)
    "SRC[torch.arange(B)[:, None], t[:, 0]]": lambda t: SRC[torch.arange(B)[:, None], t[:, 0]],
    "t[torch.arange(B).roll(1)]": lambda t: t[torch.arange(B).roll(1)],
    "t[torch.arange(B) // 2]": lambda t: t[torch.arange(B) // 2],
}


def _follows(f) -> bool:
    """Whether :class:`IntegerRows` lets ``f(T)``'s calls read the followed ``T`` (each call
    recorded, replayed with its results followed in turn)."""
    with recording() as record:
        f(T)
    runner = integer_rows.IntegerRows([], B)
    runner.follow(T)
    for call in record.calls:
        read = [a for a in tensors_in((call.args, call.kwargs))
                if any(a is h for h in runner.held)]
        if read and not integer_rows._rows_kept(call.func.__name__, call.args, call.kwargs,
                                                read, tensors_in(call.result), B):
            return False
        runner.held.extend(tensors_in(call.result) if read else [])
    return True


def _moved_rows(f) -> set:
    """The rows of ``f(T)`` that change when row 1 of ``T`` does (none where the batch is
    no longer axis 0 of size B: every row then counts as moved)."""
    t = T.clone()
    t[1] = (t[1] + 1) % 3
    before, after = f(T), f(t)
    if before.dim() == 0 or before.shape[0] != B:
        return {-1}
    return {b for b in range(B) if not torch.equal(before[b], after[b])}


@pytest.mark.parametrize("name", KEPT)
def test_a_row_keeping_view_of_integer_data_is_followed(name):
    assert _moved_rows(KEPT[name]) == {1}  # (the mathematics: row 1 alone changes)
    assert _follows(KEPT[name])


@pytest.mark.parametrize("name", MOVED)
def test_integer_data_moved_across_rows_is_refused(name):
    assert _moved_rows(MOVED[name]) != {1}
    assert not _follows(MOVED[name])
