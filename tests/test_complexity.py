"""Closed forms against exact counts; fitted exponents are labelled as fitted."""

import pytest
import sympy as sp

import attnlang

# small parameters, so exact counts at n >= valid_from are cheap
DERIVED = {
    "causal": {}, "sliding_window": {"window": 37}, "streaming": {"window": 29, "sinks": 3},
    "prefix_lm": {"prefix": 45}, "dilated": {"window": 11, "dilation": 3}, "strided": {"stride": 17},
    "block_local": {"block": 24}, "longformer": {"window": 24, "global_tokens": 3}, "cross_causal": {},
    "alibi": {}, "retention_decay": {}, "softcap": {"cap": 5.0},
}


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_derived_closed_forms_equal_exact_counts(lib, name):
    pattern = lib[name].bind(**DERIVED[name])
    complexity = pattern.complexity()
    assert complexity.method == "derived", complexity.reason
    start = complexity.valid_from
    for length in (start, start + 1, start + 17, 2 * start + 5, 3 * start + 128):
        exact = int(pattern.analyze(length, block=64).pairs(exact=True))
        assert complexity.evaluate(length) == exact, (length, complexity.pairs)


def test_closed_forms_are_symbolic_in_the_parameters(lib):
    pairs = lib["sliding_window"].complexity().pairs
    n, window = sp.Symbol("n", integer=True, positive=True), sp.Symbol("window", integer=True, positive=True)
    assert sp.simplify(pairs - (window * n - window * (window - 1) / 2)) == 0
    # the same closed form holds for another window, at lengths beyond it
    other = lib["sliding_window"].bind(window=9)
    assert lib["sliding_window"].complexity().evaluate(100, window=9) == other.analyze(100, block=16).pairs()


@pytest.mark.parametrize("name, expected", [
    ("causal", "O(n**2)"), ("sliding_window", "O(n*window)"), ("streaming", "O(n*(sinks + window))"),
    ("dilated", "O(n*window)"), ("strided", "O(n**2/stride)"), ("block_local", "O(block*n)"),
])
def test_big_o(lib, name, expected):
    assert lib[name].complexity().big_o == expected


def test_patterns_outside_the_derivable_class_are_fitted_and_say_so(lib):
    pattern = lib["neighborhood2d"].bind(height=32, width=32, kernel=5)
    complexity = pattern.complexity(fit_lengths=(1024, 2048, 4096))
    assert complexity.method == "fitted" and "(fitted)" in complexity.big_o
    assert 0.9 < complexity.exponent < 1.1
    assert complexity.pairs is None and complexity.reason


def test_per_head_quadratic_heads_fit_near_two(lib):
    complexity = lib["duo"].bind(retrieval_heads=4, window=64, sinks=4).complexity(fit_lengths=(2048, 4096, 8192))
    assert complexity.method == "fitted" and 1.8 < complexity.exponent <= 2.01


def test_input_and_routing_patterns_are_not_fitted(lib):
    assert lib["document"].complexity().method == "input-dependent"
    moba = lib["moba"].complexity()
    assert moba.method == "bound" and "512" in moba.big_o


def test_evaluate_refuses_without_a_closed_form(lib):
    with pytest.raises(ValueError):
        lib["swin"].complexity(fit_lengths=(1024, 2048)).evaluate(100)
