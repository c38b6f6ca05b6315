"""The block map against brute force: sound and exact, for stdlib and random patterns."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, strategies as st
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnlang
from attnlang import EMPTY, FULL, PARTIAL
from attnlang.printer import print_pattern
from attnlang.reference import classify_tiles

from .flex_mods import MODS, ROUTED
from .strategies import typed_exprs, wrap_mask

STATIC = sorted(name for name in MODS if name not in ROUTED)
SHAPES = [(200, 200, 64, 64), (333, 333, 32, 48), (130, 257, 16, 16), (257, 130, 64, 32), (77, 77, 128, 128)]


def doc_ids(length, seed=0):
    return np.sort(np.random.default_rng(seed).integers(0, 6, size=length))


def brute_force(pattern, seq_q, seq_k, heads, bq, bk, inputs=None):
    checked = attnlang.reference.check_inputs(pattern.ir, inputs, max(seq_q, seq_k))
    kinds = classify_tiles(pattern.ir, seq_q, seq_k, heads, bq, bk, checked)
    return kinds if pattern.depends_on_head and "h" in str(pattern.ir.mask) else kinds[:1]


def assert_same_kinds(mine, truth):
    assert mine.shape == truth.shape
    wrong = np.argwhere(mine != truth)
    if wrong.size:
        h, i, j = wrong[0]
        names = {EMPTY: "EMPTY", PARTIAL: "PARTIAL", FULL: "FULL"}
        raise AssertionError(f"{len(wrong)} tiles differ; first (head {h}, q tile {i}, k tile {j}): "
                             f"analysis {names[mine[h, i, j]]}, brute force {names[truth[h, i, j]]}")


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize("seq_q, seq_k, bq, bk", SHAPES, ids=[f"{a}x{b}-{c}x{d}" for a, b, c, d in SHAPES])
def test_stdlib_block_maps_are_exact(lib, name, seq_q, seq_k, bq, bk):
    pattern = lib[name].bind(**MODS[name][0])
    inputs = {"doc": doc_ids(max(seq_q, seq_k))} if pattern.inputs else None
    block_map = pattern.analyze(seq_q, seq_k, heads=3, block=(bq, bk), inputs=inputs)
    assert_same_kinds(block_map.kinds, brute_force(pattern, seq_q, seq_k, 3, bq, bk, inputs))
    assert sum(block_map.stats.values()) >= block_map.kinds.size


@given(
    expr=typed_exprs("bool"),
    seq_q=st.integers(1, 160), seq_k=st.integers(1, 160),
    bq=st.integers(1, 48), bk=st.integers(1, 48), heads=st.integers(1, 3),
    w=st.integers(-20, 40), seed=st.integers(0, 99),
)
def test_random_patterns_are_sound_and_exact(expr, seq_q, seq_k, bq, bk, heads, w, seed):
    try:
        module = attnlang.parse(print_pattern(wrap_mask(expr)), "t.attn")
        pattern = module["t"].bind(w=w)
    except attnlang.AttnlangError:
        assume(False)
    inputs = {"doc": np.random.default_rng(seed).integers(-3, 4, size=max(seq_q, seq_k))}
    try:
        truth = classify_tiles(pattern.ir, seq_q, seq_k, heads, bq, bk, inputs)
    except attnlang.AttnlangError:  # e.g. an integer division by zero somewhere in the matrix
        assume(False)
    block_map = pattern.analyze(seq_q, seq_k, heads=heads, block=(bq, bk), inputs=inputs)
    if block_map.kinds.shape[0] == 1:
        truth = truth[:1]
    assert_same_kinds(block_map.kinds, truth)


@given(name=st.sampled_from(STATIC), seq=st.integers(1, 300), bq=st.integers(8, 96), bk=st.integers(8, 96),
       scale=st.integers(1, 3))
def test_stdlib_patterns_with_random_parameters(lib, name, seq, bq, bk, scale):
    params = {k: (v * scale if isinstance(v, int) and not isinstance(v, bool) and k != "seed" else v)
              for k, v in MODS[name][0].items()}
    pattern = lib[name].bind(**params)
    inputs = {"doc": doc_ids(seq, scale)} if pattern.inputs else None
    block_map = pattern.analyze(seq, seq, heads=2, block=(bq, bk), inputs=inputs)
    assert_same_kinds(block_map.kinds, brute_force(pattern, seq, seq, 2, bq, bk, inputs))


# -- tables ----------------------------------------------------------------------------------

def dense_from(counts, indices, columns):
    dense = np.zeros(counts.shape + (columns,), dtype=bool)
    for h, row in np.ndindex(counts.shape):
        dense[h, row, indices[h, row, :counts[h, row]]] = True
    return dense


@pytest.mark.parametrize("name", ["sliding_window", "document", "duo", "bigbird", "swin_shifted"])
def test_index_tables_describe_the_kinds(lib, name):
    pattern = lib[name].bind(**MODS[name][0])
    inputs = {"doc": doc_ids(450)} if pattern.inputs else None
    bm = pattern.analyze(450, 390, heads=2, block=(32, 64), inputs=inputs)
    tq, tk = bm.kinds.shape[1:]
    assert (dense_from(bm.kv_num_blocks, bm.kv_indices, tk) == (bm.kinds == PARTIAL)).all()
    assert (dense_from(bm.full_kv_num_blocks, bm.full_kv_indices, tk) == (bm.kinds == FULL)).all()
    transposed = bm.kinds.transpose(0, 2, 1)
    assert (dense_from(bm.q_num_blocks, bm.q_indices, tq) == (transposed == PARTIAL)).all()
    assert (dense_from(bm.full_q_num_blocks, bm.full_q_indices, tq) == (transposed == FULL)).all()
    for table in bm.tables().values():
        assert table.dtype == np.int32
    for counts, indices in ((bm.kv_num_blocks, bm.kv_indices), (bm.full_q_num_blocks, bm.full_q_indices)):
        for h, row in np.ndindex(counts.shape):
            valid = indices[h, row, :counts[h, row]]
            assert (np.diff(valid) > 0).all()


def test_counts_and_densities(lib):
    pattern = lib["sliding_window"].bind(window=100)
    bm = pattern.analyze(1000, block=64)
    mask = pattern.reference_mask(1000, 1000)
    assert bm.counts == {k: int((bm.kinds == v).sum()) for k, v in (("empty", EMPTY), ("partial", PARTIAL),
                                                                    ("full", FULL))}
    assert bm.tile_density == pytest.approx((bm.kinds != EMPTY).mean())
    assert bm.density(exact=True) == pytest.approx(mask.mean(), abs=1e-12)
    assert bm.pairs(exact=True) == mask.sum()
    assert bm.density() == pytest.approx(mask.mean(), rel=0.05)


def test_head_dimension_only_when_the_mask_reads_h(lib):
    assert lib["causal"].analyze(256, heads=8).kinds.shape == (1, 2, 2)
    assert lib["duo"].analyze(256, heads=8).kinds.shape == (8, 2, 2)
    assert lib["alibi"].analyze(256, heads=8).kinds.shape == (1, 2, 2)  # h only in the bias


def test_exactness_is_reached_mostly_by_reasoning(lib):
    bm = lib["sliding_window"].bind(window=1000).analyze(65536, block=128)
    assert bm.stats["exact"] == 0
    assert bm.stats["sampling"] < 0.05 * (bm.counts["partial"] + bm.counts["full"])


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_q": 0}, "seq_q must be a positive int"),
    ({"seq_q": 64, "block": 0}, "block must be a positive int"),
    ({"seq_q": 64, "block": (64,)}, "block must be a positive int or a \\(block_q, block_k\\) pair"),
    ({"seq_q": 64, "heads": -1}, "heads must be a positive int"),
])
def test_bad_analysis_arguments_are_named(lib, kwargs, message):
    with pytest.raises(attnlang.AttnlangError, match=message):
        lib["causal"].analyze(**kwargs)


# -- FlexAttention ---------------------------------------------------------------------------

def flex_tables(block_mask):
    """FlexAttention's tables as sets of indices per row, valid entries only."""
    def rows(counts, indices):
        return [sorted(indices[0, h, r, :counts[0, h, r]].tolist())
                for h in range(counts.shape[1]) for r in range(counts.shape[2])]
    return (rows(block_mask.kv_num_blocks, block_mask.kv_indices),
            rows(block_mask.full_kv_num_blocks, block_mask.full_kv_indices),
            rows(block_mask.q_num_blocks, block_mask.q_indices),
            rows(block_mask.full_q_num_blocks, block_mask.full_q_indices))


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize("seq_q, seq_k, block", [(256, 256, 64), (300, 300, 64), (200, 333, 32)])
def test_to_flex_equals_create_block_mask(lib, name, seq_q, seq_k, block):
    pattern = lib[name].bind(**MODS[name][0])
    heads = 2 if pattern.depends_on_head else 1
    inputs = {"doc": doc_ids(max(seq_q, seq_k))} if pattern.inputs else None
    mask_mod, _ = pattern.flex_mods(seq_q, seq_k, heads, inputs)
    mine = pattern.analyze(seq_q, seq_k, heads=heads, block=block, inputs=inputs).to_flex()
    theirs = create_block_mask(mask_mod, 1, heads if "h" in str(pattern.ir.mask) else None, seq_q, seq_k,
                               device="cpu", BLOCK_SIZE=block)
    assert flex_tables(mine) == flex_tables(theirs)
    assert mine.seq_lengths == (seq_q, seq_k)


@pytest.mark.parametrize("name", STATIC)
def test_exported_mask_mod_equals_the_reference(lib, name):
    from torch.nn.attention.flex_attention import create_mask
    pattern = lib[name].bind(**MODS[name][0])
    inputs = {"doc": doc_ids(333)} if pattern.inputs else None
    mask_mod, _ = pattern.flex_mods(333, 300, 3, inputs)
    exported = create_mask(mask_mod, 1, 3, 333, 300, device="cpu")[0].numpy()
    assert (exported == pattern.reference_mask(333, 300, heads=3, inputs=inputs)).all()


@pytest.mark.parametrize("name", ["causal", "alibi", "retention_decay", "softcap", "document", "streaming",
                                  "cross_causal", "bigbird"])
def test_flex_attention_with_exported_mods_equals_reference_attention(lib, name):
    pattern = lib[name].bind(**MODS[name][0])
    seq_q, seq_k, heads = 192, 160, 4
    inputs = {"doc": doc_ids(seq_q)} if pattern.inputs else None
    torch.manual_seed(0)
    q = torch.randn(1, heads, seq_q, 16, dtype=torch.float64)
    k = torch.randn(1, heads, seq_k, 16, dtype=torch.float64)
    v = torch.randn(1, heads, seq_k, 16, dtype=torch.float64)
    mask_mod, score_mod = pattern.flex_mods(seq_q, seq_k, heads, inputs)
    block_mask = pattern.analyze(seq_q, seq_k, heads=heads, block=64, inputs=inputs).to_flex(mask_mod)
    out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    expected = pattern.reference_attention(q, k, v, inputs=inputs)
    rows = torch.from_numpy(pattern.reference_mask(seq_q, seq_k, heads, inputs).any(-1))[None]
    torch.testing.assert_close(out[rows], expected[rows], rtol=1e-8, atol=1e-8)


def test_flex_mods_name_what_is_missing(lib):
    with pytest.raises(attnlang.AttnlangError, match="uses 'n_[qk]'"):
        lib["cross_causal"].flex_mods()
    with pytest.raises(attnlang.AttnlangError, match="needs input 'doc'"):
        lib["document"].flex_mods()


def test_flex_source_is_readable_python(lib):
    source = lib["radial"].flex_source()
    assert "def mask_mod(b, h, q_idx, kv_idx):" in source and "    t0 = k // 1024" in source
    assert "    k = kv_idx.to(torch.int64)" in source
    compile(source, "radial", "exec")


def test_how_tiles_are_decided(lib):
    """The README's table: which stdlib patterns need witnesses or exact tile evaluation."""
    seq, heads = 4096, 2
    for pattern in lib:
        if pattern.is_routed:
            continue
        inputs = {"doc": np.minimum(np.arange(seq) * 40 // seq, 39)} if pattern.inputs else None
        stats = pattern.analyze(seq, heads=heads, inputs=inputs).stats
        if pattern.name in ("causal", "sliding_window", "prefix_lm", "block_local", "radial", "sliding_tile", "duo",
                            "cross_causal", "alibi"):
            assert stats["sampling"] == stats["exact"] == 0, pattern.name
        if pattern.name in ("streaming", "document"):  # sink columns and document edges: a few witnesses
            assert stats["exact"] == 0 and stats["sampling"] < 0.03 * sum(stats.values()), pattern.name
        if not pattern.name.startswith("swin"):
            assert stats["exact"] == 0, pattern.name
        assert stats["exact"] <= 0.02 * sum(stats.values()), pattern.name


def test_every_ir_consumer_has_a_method_for_every_node():
    from attnlang import ir
    from attnlang.complexity import SympyPrinter
    from attnlang.export import TorchPrinter
    from attnlang.intervals import IntervalEvaluator
    from attnlang.reference import Evaluator
    for consumer in (Evaluator, IntervalEvaluator, TorchPrinter, SympyPrinter):
        for node_type in ir.NODE_TYPES:
            assert hasattr(consumer, "visit_" + node_type.__name__), (consumer.__name__, node_type.__name__)


def test_tables_grow_with_the_boundary_not_the_area(lib):
    """Causal at a million tokens: one FULL run and one PARTIAL tile a row, and the dense kind
    map (64 MiB at 128 x 128 tiles) is never built for the tables or the counts."""
    block_map = lib["causal"].analyze(1 << 20, heads=1, block=128)
    (full_counts, runs), (partial_counts, partial) = block_map.kernel_tables["forward"]
    assert runs.shape == (1, 8192, 1, 2) and partial.shape == (1, 8192, 1)
    assert (full_counts[0, 1:] == 1).all() and (runs[0, 1:, 0, 0] == 0).all()  # each row: tiles 0 .. row - 1
    assert (runs[0, 1:, 0, 1] == np.arange(1, 8192)).all() and (partial_counts == 1).all()
    assert block_map.counts["full"] == 8192 * 8191 // 2 and block_map.dense is None
    assert "kinds" not in block_map.__dict__
