"""core/origin.py: the one owner of "is this PyTorch's code, this package's or the user's?",
and each of its callers as before: backward_writes follows the user's helpers only,
quiet's default-device mode tells this package's calls from the user's, reentrant's unpack
hooks are the user's (or checkpoint's) but not PyTorch's own.

Expected values: where each file and function lives (the modules' own ``__file__``)."""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from vjp_magic.core import origin, quiet, reach, reentrant

_GEN = torch.Generator().manual_seed(0)


def _frame_in(filename: str, inner=None, body: str = "inner() if inner else sys._getframe()"):
    """A function whose code is in ``filename``, returning ``body`` (by default its frame,
    or what ``inner`` returns, called from there)."""
    space = {"sys": sys, "torch": torch, "inner": inner}
    exec(compile(f"def where():\n    return {body}\n", filename, "exec"), space)
    return space["where"]


def test_files_are_torchs_ours_or_the_users():
    assert origin.torchs(os.path.abspath(F.__file__))
    assert not origin.torchs(origin.TORCH_DIR.rstrip(os.sep) + "vision" + os.sep + "ops.py")
    assert origin.ours(os.path.abspath(quiet.__file__))
    assert not origin.ours(os.path.abspath(__file__)) and not origin.torchs(__file__)


def test_called_by_us_looks_past_torchs_frames_only():
    ours = os.path.join(origin.PACKAGE_DIR, "core", "somewhere.py")
    torchs = os.path.join(origin.TORCH_DIR, "nn", "somewhere.py")
    assert origin.called_by_us(_frame_in(ours)())
    assert origin.called_by_us(_frame_in(ours, _frame_in(torchs))())  # torch, called by us
    assert not origin.called_by_us(_frame_in(torchs)())  # torch, called by this test
    assert not origin.called_by_us(sys._getframe())


def _helper():
    return torch.randn(2, generator=_GEN)


class _Users:
    def method(self):
        return _helper()


def test_users_functions_are_the_users_not_a_librarys():
    assert origin.users_function(_helper) and origin.users_function(_Users().method)
    assert not origin.users_function(F.softplus)  # torch's Python
    assert not origin.users_function(json.dumps)  # the standard library's
    assert not origin.users_function(len) and not origin.users_function(_Users)


def test_backward_writes_follows_the_users_helpers_not_torchs():
    def backward():
        return _helper() + F.softplus(torch.zeros(1))
    read = reach.read_by(backward)
    assert _GEN in read  # read by the user's helper, one call deep
    assert not [v for v in read if isinstance(v, torch.Generator) and v is not _GEN]


def test_quiet_makes_our_factory_calls_on_the_cpu_and_the_users_on_their_device():
    with torch.device("meta"), quiet.analysis_device():
        ours = _frame_in(os.path.join(origin.PACKAGE_DIR, "x.py"), body="torch.zeros(1)")()
        users = torch.zeros(1)
    assert ours.device.type == "cpu" and users.device.type == "meta"


def test_reentrant_counts_checkpoints_and_the_users_hooks_not_torchs_own():
    def users_hook(t):
        return t
    assert reentrant._users_code(users_hook.__code__)
    assert reentrant._users_code(torch.utils.checkpoint._checkpoint_hook.__init__.__code__)
    copy_back = torch.autograd.graph.save_on_cpu.__init__.__code__
    assert origin.torchs(copy_back.co_filename) and not reentrant._users_code(copy_back)
