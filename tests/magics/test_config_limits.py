"""%config refuses the display settings the line's flags refuse, with a short message, and
keeps the last good value."""
from __future__ import annotations

import pytest

LIMITS = [("precision", 0, 6), ("precision", 18, 6), ("width", 5, 60), ("threshold", 1, 12),
          ("edgeitems", 0, 2), ("height", 0, 900)]


@pytest.mark.parametrize("name, bad, good", LIMITS)
def test_a_bad_setting_is_refused_and_the_good_one_stays(ip, capsys, name, bad, good):
    magics = ip.magics_manager.registry["VJPMagics"]
    before = getattr(magics, name)
    try:
        ip.run_line_magic("config", f"VJPMagics.{name} = {good}")
        capsys.readouterr()
        ip.run_line_magic("config", f"VJPMagics.{name} = {bad}")
        out = capsys.readouterr()
        assert f"VJPMagics.{name} is" in out.err and f"not {bad}. It stays {good}." in out.err
        assert getattr(magics, name) == good
    finally:
        ip.run_line_magic("config", f"VJPMagics.{name} = {before}")
