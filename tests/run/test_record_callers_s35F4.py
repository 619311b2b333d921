"""A recorded call is made from a frame that reads as the cell's line (s35 F4, so its warnings
are where a plain run has them); that frame is the magic's and is left out of the user's
traceback, as the recorder's own are: the frames shown are a plain cell's."""
from __future__ import annotations

import traceback

import pytest
import torch

import vjp_magic

CELL = "x = torch.ones(2, requires_grad=True)\ny = x @ torch.zeros(3)"


def _frames(error) -> list:
    return [(f.f_code.co_name, line) for f, line in traceback.walk_tb(error.__traceback__)
            if f.f_code.co_filename.startswith("<ipython-input")]


def test_a_cells_error_shows_a_plain_cells_frames(ip):
    plain = ip.run_cell(CELL).error_in_exec
    magic = ip.run_cell("%%vjp\n" + CELL).error_in_exec
    assert type(magic) is type(plain)
    assert _frames(magic)[-1:] == _frames(plain)[-1:] == [("<module>", 2)]


def test_a_functions_error_shows_its_own_frames():
    def fn():
        return torch.ones(2, requires_grad=True) @ torch.zeros(3)

    with pytest.raises(RuntimeError) as caught:
        vjp_magic.differentiate(fn, torch.ones(2, requires_grad=True))
    names = [f.f_code.co_name for f, _ in traceback.walk_tb(caught.value.__traceback__)]
    assert names[-1] == "fn", names
