"""The memory budget (``core/memory.py``): sizes shown truthfully, a budget of 0 or below
refused."""
from __future__ import annotations

import pytest
from coached import refused

# -- memory: sizes shown truthfully, a budget of 0 or below refused -----------------------------

@pytest.mark.parametrize("nbytes, shown", [
    (0, "0 bytes"), (1, "1 byte"), (36, "36 bytes"), (999, "999 bytes"), (1000, "1 kB"),
    (1536, "1.54 kB"), (40_000, "40 kB"), (123_456, "123 kB"), (2_500_000, "2.5 MB"),
    (512e6, "512 MB"), (1.6e11, "160.0 GB"),
])
def test_sizes_are_shown_truthfully(nbytes, shown):
    from vjp_magic.core.memory import gb

    assert gb(nbytes) == shown


def test_refusal_over_a_tiny_budget_names_true_sizes(ip, capsys):
    ip.run_line_magic("config", "VJPMagics.memory_budget = 500")
    try:
        msg = refused(ip, capsys, "%%vjp --full\ng = torch.ones(2000, requires_grad=True)\n"
                                  "h = g.exp()", keep=["g", "h"])
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")
    assert "would need 16 MB, over the memory budget of 500 bytes" in msg, msg
    assert "0 kB" not in msg
    assert ip.user_ns["g"].grad is None


@pytest.mark.parametrize("budget", ["0", "-1", "-2e9", "float('nan')"])
def test_budget_of_zero_or_below_is_refused(ip, assert_tensor, run_vjp, capsys, budget):
    ip.run_line_magic("config", "VJPMagics.memory_budget = 1e9")
    capsys.readouterr()
    try:
        ip.run_line_magic("config", f"VJPMagics.memory_budget = {budget}")
        err = capsys.readouterr().err
        assert "memory_budget must be positive" in err and "It stays 1000000000.0" in err
        assert ip.run_line_magic("config", "VJPMagics.memory_budget") == 1e9
        r = run_vjp("g = torch.ones(3, requires_grad=True)\nh = g * 2")  # still works
        assert_tensor(r.derivatives["g"], [2.0, 2.0, 2.0])
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")
