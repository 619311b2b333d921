"""A cell run again: parse_cell reads its targets and names once per source text, and
capture_targets copies nothing where no subscript or attribute is stored into."""
import ast

from vjp_magic.core import cell
from vjp_magic.core.cell import capture_targets, parse_cell

SOURCE = "a, b = f(x), g(y)\nz = a + b\nz * w\n"


def test_a_source_parsed_again_reads_the_same_and_shares_nothing():
    first, second = parse_cell(SOURCE), parse_cell(SOURCE)
    assert first.targets == second.targets == ["a", "b", "z"]
    assert first.loaded_names == second.loaded_names == ["f", "x", "g", "y", "a", "b", "z", "w"]
    assert first.final_source == second.final_source == "z * w"
    assert first.body is not second.body and first.body.body[0] is not second.body.body[0]
    first.targets.append("q")
    first.loaded_names.clear()
    third = parse_cell(SOURCE)
    assert third.targets == ["a", "b", "z"] and third.loaded_names[0] == "f"


def test_the_remembered_reads_are_bounded():
    for k in range(cell._READ_MAX + 10):
        parse_cell(f"v{k} = {k}\n")
    assert len(cell._READ) <= cell._READ_MAX
    assert parse_cell("v3 = 3\n").targets == ["v3"]


def test_a_changed_tree_does_not_change_what_a_source_reads():
    parsed = parse_cell(SOURCE)
    parsed.body.body.clear()  # as an AST transformer might
    assert parse_cell(SOURCE).targets == ["a", "b", "z"]
    assert len(parse_cell(SOURCE).body.body) == 2


def test_no_store_into_a_part_returns_the_module_itself():
    module = ast.parse("y = x ** 2\nfor k in range(3):\n    y = y + k\n")
    assert capture_targets(module) is module


def test_a_store_into_a_part_is_still_rewritten_on_a_copy():
    for source in ("d['y'] = x\n", "net.out = x\n", "d[0] += 1\n", "for d[0] in r:\n    pass\n",
                   "with c as net.h:\n    pass\n", "a, d[1] = p\n"):
        module = ast.parse(source)
        dumped = ast.dump(module)
        captured = capture_targets(module)
        assert captured is not module and cell.CAPTURE_NAME in ast.unparse(captured)
        assert ast.dump(module) == dumped  # the original is left as it was
