"""Every error kind of LANGUAGE.md: message, line, column and caret.

Each row is (program, expected message fragment, line, column). The rendered report must
be `t.attn:LINE:COL: error: ...`, the source line, and a caret under the offending token.
"""

import numpy as np
import pytest

import attnlang

ERRORS = [
    # unknown names, with "did you mean"
    ("pattern p(window = 4) {\n    mask q - k < windw\n}", "unknown name 'windw'; did you mean 'window'?", 2, 18),
    ("pattern p() {\n    mask causl()\n}", "unknown function 'causl'; did you mean 'causal'?", 2, 10),
    ("pattern p() {\n    use streamin()\n}", "unknown pattern 'streamin'; did you mean 'streaming'?", 2, 5),
    ("pattern p() {\n    mask streaming(windo = 3)\n}", "has no argument 'windo'; did you mean 'window'?", 2, 20),
    ("pattern p() {\n    grid (y, x) = (4, 4)\n    mask q.yy > 0\n}", "no axis 'yy'; did you mean 'y'?", 3, 10),
    ("pattern p() {\n    input doc: int[tokens]\n    mask dok[q] == 1\n}", "unknown input 'dok'; did you mean 'doc'?", 3, 10),
    # types
    ("pattern p() {\n    mask q - k\n}", "mask expects a boolean expression, found int", 2, 10),
    ("pattern p() {\n    mask q >= k and 3\n}", "'and' expects bools, found int", 2, 21),
    ("pattern p(flag = true) {\n    mask q + flag > 0\n}", "'+' expects numbers, found bool", 2, 14),
    ("pattern p() {\n    bias q >= k\n}", "bias expects a number, found bool", 2, 10),
    ("pattern p() {\n    mask if q > k then 1 else true\n}", "both branches of 'if' must have the same type", 2, 31),
    ("pattern p() {\n    mask if q then true else false\n}", "'if' expects a bool condition, found int", 2, 13),
    ("pattern p() {\n    mask hash(q, 1.5) > 0\n}", "hash expects ints, found float", 2, 18),
    ("pattern p() {\n    mask not q\n}", "'not' expects a bool, found int", 2, 14),
    ("pattern p() {\n    mask (q > k) < true\n}", "'<' expects numbers, found bool", 2, 11),
    # arity
    ("pattern p() {\n    mask abs(q, k) < 3\n}", "abs takes 1 argument, got 2", 2, 10),
    ("pattern p() {\n    mask clamp(q, 1) < 3\n}", "clamp takes 3 arguments, got 2", 2, 10),
    ("pattern p() {\n    mask min(q) < 3\n}", "min takes at least 2 arguments, got 1", 2, 10),
    ("pattern p() {\n    mask streaming(1, 2, 3)\n}", "takes at most 2 arguments (window, sinks), got 3", 2, 26),
    ("pattern p() {\n    route topk(3)\n}", "topk needs argument 'block'", 2, 5),
    # non-boolean mask / score outside score and bias
    ("pattern p() {\n    mask score > 0\n}", "'score' is only available inside score and bias statements", 2, 10),
    ("pattern p() {\n    let s = score * 2\n    mask s > 0\n}", "'score' is only available inside score and bias", 3, 10),
    # recursive use
    ("pattern p() {\n    use p()\n}", "recursive use of pattern 'p' (p -> p)", 2, 5),
    ("pattern a() {\n    use b()\n}\npattern b() {\n    mask a()\n}", "recursive use of pattern 'a' (a -> b -> a)", 5, 10),
    # bad literals
    ("pattern p(x = 08) { mask q >= k }", "bad literal '08'", 1, 15),
    ("pattern p(x = 1.5.2) { mask q >= k }", "bad literal '1.5.2'", 1, 15),
    ("pattern p() {\n    mask q >= 12abc\n}", "bad literal '12abc'", 2, 15),
    ("pattern p(x = 99999999999999999999) { mask q >= k }", "does not fit in 64 bits", 1, 15),
    ("pattern p() {\n    mask q < 2 ** 70\n}", "overflows 64-bit integers", 2, 14),
    ("pattern p() {\n    mask q // 0 == 1\n}", "division by zero", 2, 15),
    # syntax, with hints for what people bring from other languages
    ("pattern p() {\n    mask q >= k && k < 3\n}", "write 'and' instead of '&&'", 2, 17),
    ("pattern p() {\n    mask q => k\n}", "unknown operator '=>'; did you mean '>='?", 2, 12),
    ("pattern p() {\n    mask q = k\n}", "'=' binds a name; to compare, write '=='", 2, 12),
    ("pattern p() {\n    mask 0 <= k < q\n}", "comparisons do not chain", 2, 17),
    ("pattern p() {\n    mask q >= k;\n}", "drop the ';'", 2, 16),
    ("pattern p(let = 3) { mask q >= k }", "'let' is a keyword and cannot be used as a name", 1, 11),
    ("pattern p() {\n    mask q >= k\n", "unexpected end of file", 2, 16),
    # declarations
    ("pattern p() {\n    let q = 3\n    mask true\n}", "'q' is a built-in name and cannot be a let", 2, 5),
    ("pattern p() {\n    let a = 1\n    let a = 2\n    mask true\n}", "'a' is already defined (line 2)", 3, 5),
    ("pattern p(a = 1, a = 2) { mask true }", "parameter 'a' is declared twice", 1, 18),
    ("pattern p() { mask true }\npattern p() { mask true }", "pattern 'p' is defined twice", 2, 9),
    ("pattern p() {\n    mask q.y > 0\n}", "'q.y' needs a grid statement", 2, 10),
    ("pattern p() {\n    grid (y, x) = (4, 0)\n    mask true\n}", "grid size of axis 'x' must be positive", 2, 23),
    ("pattern p() {\n    input doc: bool[tokens]\n    mask true\n}", "an input holds ints or floats", 2, 16),
    ("pattern p() {\n    input m: int[blocks(64)]\n    mask m\n}", "a block input holds bools", 2, 14),
    ("pattern p() {\n    input m: bool[head, blocks(64)]\n    mask m\n}", "first axis is 'heads'", 2, 19),
    ("pattern p() {\n    input m: bool[blocks(64)]\n    mask m[q]\n}", "is a block input: write its name alone", 3, 10),
    ("pattern p() {\n    input doc: int[tokens]\n    mask doc == 1\n}", "index it: doc[q] or doc[k]", 3, 10),
    ("pattern p() {\n    mask moba()\n}", "routes by content", 2, 10),
    ("pattern p() {\n    route topk(3, block = 0)\n}", "block must be at least 1, found 0", 2, 27),
    ("pattern p() {\n    route topk(3, block = 4)\n    route topk(3, block = 4)\n}", "routes at most once", 3, 5),
    ("pattern p() {\n    route topk(q, block = 4)\n}", "top must be a constant int", 2, 16),
    ("pattern p() {\n    mask streaming(q)\n}", "must be a compile-time constant", 2, 20),
    ("pattern p() {\n    mask streaming(1.5)\n}", "parameter 'window' of 'streaming' expects int, got float", 2, 20),
]


@pytest.mark.parametrize("program, message, line, column", ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_error_message_and_caret(program, message, line, column):
    with pytest.raises(attnlang.AttnlangError) as info:
        attnlang.parse(program, "t.attn")
    err = info.value
    assert message in err.message
    assert (err.line, err.column) == (line, column)
    report = str(err).splitlines()
    assert report[0].startswith(f"t.attn:{line}:{column}: error: ")
    source_line = program.splitlines()[line - 1] if line <= len(program.splitlines()) else ""
    if source_line:
        assert report[1] == "    " + source_line
        caret = report[2]
        assert caret.index("^") == 4 + column - 1


def test_error_knows_its_file(tmp_path):
    path = tmp_path / "bad.attn"
    path.write_text("pattern p() {\n    mask q >\n}\n")
    with pytest.raises(attnlang.AttnlangError) as info:
        attnlang.load(path)
    assert str(info.value).startswith(f"{path}:3:1: error: ")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(attnlang.AttnlangError, match="cannot read"):
        attnlang.load(tmp_path / "nope.attn")


def test_caret_spans_the_whole_token():
    with pytest.raises(attnlang.AttnlangError) as info:
        attnlang.parse("pattern p() {\n    mask q < windw\n}", "t.attn")
    assert str(info.value).splitlines()[2] == " " * 17 + "^~~~~"


# -- the Python API: wrong input is an AttnlangError (or a warning), never a raw traceback ----

def test_program_bytes_are_decoded_as_utf8():
    assert attnlang.parse(b"pattern p() { mask q >= k }")["p"].label == "p()"
    with pytest.raises(attnlang.AttnlangError) as info:
        attnlang.parse(b"pattern p() {\n  mask q >= k \xff\n}", "t.attn")
    assert str(info.value).startswith("t.attn:2:15: error: the file is not UTF-8 text: byte 0xff")
    with pytest.raises(attnlang.AttnlangError, match="parse expects the program text as str or UTF-8 bytes, got int"):
        attnlang.parse(3)


@pytest.mark.parametrize("op, terms", [("and", 5000), ("or", 20000)])
def test_flat_chains_of_any_length_parse(op, terms):
    condition = "q + {} >= k" if op == "and" else "q == k + {}"
    body = f" {op} ".join(condition.format(i) for i in range(terms))
    pattern = attnlang.parse(f"pattern c() {{\n    mask {body}\n}}")["c"]
    mask = pattern.reference_mask(40, 40, 1)[0]
    expected = np.subtract.outer(np.arange(40), np.arange(40)) >= 0
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("terms", [32, 33, 64, 65, 100, 131, 249, 1000])
def test_printed_long_chains_reparse_to_the_same_tree(terms):
    from attnlang.parser import parse_source
    from attnlang.printer import print_pattern
    text = "pattern c() {\n    mask " + " or ".join(f"k == {i}" for i in range(terms)) + "\n}\n"
    decl = parse_source(attnlang.errors.Source(text)).patterns[0]
    again = parse_source(attnlang.errors.Source(print_pattern(decl))).patterns[0]
    assert again == decl


def test_complexity_of_every_kind_prints():
    lib = attnlang.stdlib()
    for name, method in (("moba", "bound"), ("document", "input-dependent"), ("swin", "fitted"),
                         ("causal", "derived")):
        complexity = lib[name].complexity()
        assert complexity.method == method and complexity.big_o in str(complexity)
    with pytest.raises(ValueError, match="a bound complexity has no closed form"):
        lib["moba"].complexity().evaluate(1024)


def test_a_mask_that_allows_nothing_warns():
    pattern = attnlang.stdlib()["sliding_window"].bind(window=-5)
    with pytest.warns(attnlang.AttnlangWarning, match=r"sliding_window\(window=-5\)' allows no"):
        pattern.analyze(64, 64, 1, 16)


def test_dense_maps_beyond_the_limit_are_refused_and_everything_else_works():
    block_map = attnlang.stdlib()["causal"].analyze(10_000_000, block=16)
    assert block_map.counts["partial"] == 625_000 and block_map.density() == pytest.approx(0.5, abs=1e-6)
    assert block_map.kernel_tables["forward"][0][0].shape == (1, 625_000)
    with pytest.raises(attnlang.AttnlangError, match="the dense tile map would hold 390,625,000,000 tiles"):
        block_map.kinds


def test_the_readme_api_is_exported():
    for name in ("parse", "load", "stdlib", "attention", "from_mask_mod", "simulate", "AttnlangError",
                 "AttnlangWarning", "BlockMap"):
        assert name in attnlang.__all__ and callable(getattr(attnlang, name))
    result = attnlang.simulate(attnlang.stdlib()["causal"], seq=4096)
    assert 1.2 < result.speedup < result.upper_bound < 2


def test_a_bool_argument_computed_from_parameters_is_fitted_not_derived():
    module = attnlang.parse("""
pattern flag(on = false, w = 4) { mask q >= k and (on or q - k < w) }
pattern boolfwd(w = 4) { use flag(on = w > 10, w = w) }""")
    complexity = module["boolfwd"].complexity()
    assert complexity.method == "fitted" and "bool argument 'on'" in complexity.reason
