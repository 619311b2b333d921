"""A %%vjp line read again is not parsed again, and what it gives is never shared."""
from IPython.core.error import UsageError
import pytest

from vjp_magic.magics import VJPMagics, _ends_with_semicolon
from vjp_magic.magics.options import read_cell_line


def test_a_line_read_again_gives_equal_unshared_options():
    parser = VJPMagics.vjp.parser
    first = read_cell_line(parser, "--wrt model x --of y.sum() + 1 -p 3")
    second = read_cell_line(parser, "--wrt model x --of y.sum() + 1 -p 3")
    assert vars(first) == vars(second)
    assert first.wrt == ["model", "x"] and first.precision == 3
    assert first is not second and first.wrt is not second.wrt
    first.wrt.append("z")
    assert read_cell_line(parser, "--wrt model x --of y.sum() + 1 -p 3").wrt == ["model", "x"]


def test_a_bad_line_is_refused_every_time():
    parser = VJPMagics.vjp.parser
    for _ in range(2):
        with pytest.raises(UsageError):
            read_cell_line(parser, "-p 99")


def test_the_semicolon_rule_is_ipythons_on_every_call():
    for _ in range(2):
        assert _ends_with_semicolon("y = x\ny;")
        assert not _ends_with_semicolon("y = x\ny")
        assert not _ends_with_semicolon("y = 'a;'")
