"""Routing is never silently static: export refuses or routes, analysis reports the routed bound,
the simulator prices the bound plus the selection stage."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn.attention.flex_attention import flex_attention

import attnlang
from attnlang import AttnlangError


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


@pytest.mark.parametrize("export", [
    lambda p: p.flex_mods(64, 64),
    lambda p: p.flex_source(64, 64),
    lambda p: p.analyze(64, block=16).to_flex(),
])
def test_mods_alone_refuse_routing_instead_of_exporting_the_static_mask(lib, export):
    with pytest.raises(AttnlangError, match=r"routes by content .*to_flex\(q=q, k=k\)"):
        export(lib["moba"].bind(block=16, top=1))


def test_the_static_candidates_are_exported_when_asked(lib):
    pattern = lib["moba"].bind(block=16, top=1)
    mask_mod, _ = pattern.flex_mods(64, 64, static_only=True)
    assert bool(mask_mod(0, 0, torch.tensor(5), torch.tensor(3)))  # causal: q >= k
    assert pattern.analyze(64, block=16).to_flex(static_only=True).shape == (1, 1, 64, 64)


def flex(q, k, v, block_mask):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager flex_attention on CPU
        return flex_attention(q, k, v, block_mask=block_mask)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["moba", "blocks"]), top=st.integers(1, 3), route_block=st.sampled_from([8, 16, 32]),
       tile=st.sampled_from([16, 32]), seq=st.integers(20, 150), heads_kv=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_a_routed_block_mask_from_the_tensors_equals_the_routed_reference(lib, name, top, route_block, tile, seq,
                                                                           heads_kv, seed):
    blocks = attnlang.parse("pattern blocks(block = 8, top = 1) { route topk(top, block = block) }")["blocks"]
    pattern = (lib["moba"] if name == "moba" else blocks).bind(block=route_block, top=top)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, seq, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, heads_kv, seq, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    block_mask = pattern.analyze(seq, heads=2, block=tile).to_flex(q=q, k=k)
    kv = (k.repeat_interleave(2 // heads_kv, 1), v.repeat_interleave(2 // heads_kv, 1))
    expected = pattern.reference_attention(q, k, v)
    torch.testing.assert_close(flex(q, *kv, block_mask), expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(top=st.integers(1, 3), route_block=st.sampled_from([8, 16, 32]), seq=st.integers(20, 200),
       seed=st.integers(0, 1000))
def test_per_token_routing_allows_at_most_k_blocks_per_query_and_its_work_bound(lib, top, route_block, seq, seed):
    pattern = lib["moba"].bind(block=route_block, top=top)
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 2, seq, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    routed = pattern.reference_mask(seq, seq, heads=2, q=q, k=k)
    pairs = routed.sum(-1)  # per query token: its own block's pairs plus K blocks at most
    assert (pairs <= (top + 1) * route_block).all()
    from attnlang.routing import routed_rows
    block_map = pattern.analyze(seq, heads=2, block=route_block)
    work = routed_rows(block_map).sum(-1) * route_block * route_block  # per head map, in pairs
    assert (work >= routed.reshape(2, -1).sum(-1)).all()


@settings(max_examples=25, deadline=None)
@given(top=st.integers(1, 3), route_block=st.sampled_from([8, 16, 32]), tile=st.sampled_from([8, 16, 32]),
       seq=st.integers(20, 200), seed=st.integers(0, 1000))
def test_the_routed_bound_holds_for_every_selection(lib, top, route_block, tile, seq, seed):
    pattern = attnlang.parse(f"""pattern block_moba() {{
    mask q >= k
    route topk({top}, block = {route_block}, keep = q // {route_block} == k // {route_block})
}}""")["block_moba"]  # routed per query block: the bound counts tiles visited
    block_map = pattern.analyze(seq, heads=2, block=tile)
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 2, seq, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    routed = pattern.reference_mask(seq, seq, heads=2, q=q, k=k)
    rows = -(-seq // tile)
    padded = np.zeros((2, rows * tile, rows * tile), dtype=bool)
    padded[:, :seq, :seq] = routed
    visited = padded.reshape(2, rows, tile, rows, tile).any(axis=(2, 4)).sum(-1)
    from attnlang.routing import routed_rows
    bound = routed_rows(block_map)
    assert (visited <= bound).all()
    assert block_map.routed_tiles("tiles") <= block_map.counts["full"] + block_map.counts["partial"]


def test_the_simulator_prices_the_routed_bound_and_the_selection(lib):
    moba, causal = lib["moba"], lib["causal"]  # moba's static candidates are causal's
    per_block = attnlang.parse("""pattern r(block = 512, top = 3) {
    mask q >= k
    route topk(top, block = block, keep = q // block == k // block)
}""")["r"]
    routed = attnlang.simulate(per_block, seq=16384)
    static = attnlang.simulate(causal, seq=16384)
    assert routed.breakdown["selection"] > 0 and static.breakdown["selection"] == 0
    assert routed.time_ms == pytest.approx(sum(routed.breakdown.values()))
    assert routed.speedup > 2 * static.speedup  # 3 blocks of 512 and its own, not half the matrix
    # per token, a tile's 128 rows may each choose other blocks: the tile-major bound is causal's tiles
    tile_major = attnlang.simulate(moba, seq=16384, route_schedule="tiles")
    block_map = moba.analyze(16384, block=(128, 64))
    from attnlang.routing import routed_rows
    assert routed_rows(block_map).sum() == block_map.counts["full"] + block_map.counts["partial"]
    assert tile_major.upper_bound == pytest.approx(block_map.kinds.size / routed_rows(block_map).sum())
    assert tile_major.time_ms > static.time_ms  # the same tiles, a routed mask and a selection stage on top
    # what the kernel runs: the chosen blocks key-block-major, a program per 128 rows that chose one
    gathered = attnlang.simulate(moba, seq=16384)
    assert gathered.breakdown["gathered"] > 0 and gathered.breakdown["merge"] > 0
    assert gathered.time_ms == pytest.approx(sum(gathered.breakdown.values()))
    from attnlang.routing import routed_kinds
    kept = int((routed_kinds(block_map, kept_only=True) != 0).sum())  # the diagonal blocks, tile-major
    # 16384 rows x 3 choices over 32 blocks of 8 key tiles: a program per 128 of them, one more per block
    assert block_map.routed_tiles() == block_map.routed_tiles("gathered")  # what the kernel picks here
    assert kept < block_map.routed_tiles() <= kept + (16384 * 3 / 128 + 32) * 8
    assert gathered.upper_bound >= block_map.kinds.size / block_map.routed_tiles()  # expected within the bound
    assert gathered.time_ms < static.time_ms < tile_major.time_ms
    with pytest.raises(attnlang.AttnlangError, match="route_schedule"):
        attnlang.simulate(per_block, seq=4096, route_schedule="gathered")


def test_analyze_says_the_counts_are_the_static_candidates(capsys):
    from attnlang.cli import main
    assert main(["analyze", "stdlib", "moba", "--seq", "4096"]) == 0
    assert "routing picks 3 blocks of 512 per query token" in capsys.readouterr().out


# -- every routing option, against an obviously correct loop ----------------------------------

def oracle_mask(pattern, seq, heads, q, k):
    """Routing by loops over batch entry 0, heads, query units and key blocks."""
    route = pattern.ir.route
    static = pattern.reference_mask(seq, seq, heads, static_only=True)
    keep_only = attnlang.parse(f"pattern keep_only() {{ mask {route.keep} }}")["keep_only"]
    keep = keep_only.reference_mask(seq, seq, heads)
    unit, block = route.query_block, route.block
    group = {"head": 1, "group": heads // k.shape[1], "all": heads}[route.share]
    selected = np.zeros((heads, seq, seq), dtype=bool)
    q, k = q[0].double(), k[0].double()

    def summary_score(vector, keys):
        if route.pool == "minmax":
            low, high = keys.min(0).values, keys.max(0).values
            return float(torch.maximum(vector * low, vector * high).sum())
        summary = {"mean": keys.mean(0), "max": keys.max(0).values, "last": keys[-1]}[route.pool]
        return float(vector @ summary)

    for first_head in range(0, heads, group):
        members = range(first_head, first_head + group)
        for start in range(0, seq, unit):
            rows = slice(start, min(start + unit, seq))
            scores = {}
            for j, col in enumerate(range(0, seq, block)):
                cols = slice(col, min(col + block, seq))
                if not any((static[h, rows, cols] & ~keep[h, rows, cols]).any() for h in members):
                    continue
                total = 0.0
                for h in members:
                    keys = k[h // (heads // k.shape[0]), cols]
                    queries = q[h, rows]
                    if unit > 1 and route.qpool == "mean":
                        total += summary_score(queries.mean(0), keys)
                    else:
                        total += max(summary_score(v, keys) for v in queries)
                scores[j] = total
            chosen = sorted(scores, key=lambda j: (-scores[j], j))[:route.top]
            if route.top_p is not None and chosen:  # keep while the probability mass before is below P
                best = max(scores.values())
                total = sum(np.exp(v - best) for v in scores.values())
                kept, mass = [], 0.0
                for j in chosen:
                    if mass >= route.top_p:
                        break
                    kept.append(j)
                    mass += np.exp(scores[j] - best) / total
                chosen = kept
            for j in chosen:
                selected[list(members), rows, j * block:(j + 1) * block] = True
    return static & (selected | keep)


@settings(max_examples=60, deadline=None)
@given(pool=st.sampled_from(["mean", "max", "minmax", "last"]), qpool=st.sampled_from(["mean", "max"]),
       share=st.sampled_from(["head", "group", "all"]), per_token=st.booleans(), top=st.integers(1, 3),
       block=st.integers(2, 9), seq=st.integers(5, 40), heads_kv=st.sampled_from([1, 2]), seed=st.integers(0, 999),
       top_p=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_every_routing_option_equals_a_loop_over_units_and_blocks(pool, qpool, share, per_token, top, block, seq,
                                                                  heads_kv, seed, top_p):
    options = f"pool = {pool}, share = {share}" + (", qblock = 1" if per_token else f", qpool = {qpool}")
    selector = f"topk({top}" if top_p is None else f"top_p({top_p!r}, max = {top}"
    pattern = attnlang.parse(f"""pattern r() {{
    mask q >= k
    route {selector}, block = {block}, {options}, keep = q // {block} == k // {block})
}}""")["r"]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, seq, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(1, heads_kv, seq, 3, generator=gen, dtype=torch.float64)
    np.testing.assert_array_equal(pattern.reference_mask(seq, seq, heads=4, q=q, k=k),
                                  oracle_mask(pattern, seq, 4, q, k))


@pytest.mark.parametrize("source, message", [
    ("route topk(2, block = 8, qblock = 4)", "qblock must be 1 .route every query token. or the block .8."),
    ("route topk(2, block = 8, qblock = 1, qpool = max)", "qpool pools the queries of a block: it needs qblock"),
    ("route topk(2, block = 8, share = heads)", "share must be one of head, group, all; did you mean 'head'"),
    ("route topk(2, block = 8, pool = maxx)", "pool must be one of mean, max, minmax, last"),
    ("route top_p(1.5, max = 4, block = 8)", r"top_p's P must be a constant in \(0, 1\]"),
    ("route top_p(0.5, block = 8)", "max"),
    ("route topp(0.5, max = 2, block = 8)", "did you mean 'top_p'"),
])
def test_routing_options_are_checked(source, message):
    with pytest.raises(AttnlangError, match=message):
        attnlang.parse(f"pattern r() {{ {source} }}")


def region_oracle_mask(sizes, region, top, seq, q, k, per_token):
    """Grid-region routing by loops in token order: a token's region from its grid coordinates,
    each query region's (or token's) `top` regions by mean-query . mean-key, ties to the lower region."""
    strides = [int(np.prod(sizes[i + 1:])) for i in range(len(sizes))]
    counts = [-(-s // r) for s, r in zip(sizes, region)]
    counts[0] = -(-(seq // strides[0]) // region[0])

    def region_of(token):
        coords = [token // strides[0]] + [token // strides[i] % sizes[i] for i in range(1, len(sizes))]
        index = 0
        for c, r, n in zip(coords, region, counts):
            index = index * n + c // r
        return index

    ids = np.array([region_of(t) for t in range(seq)])
    q, k = q[0].double(), k[0].double()
    heads = q.shape[0]
    selected = np.zeros((heads, seq, seq), dtype=bool)
    for h in range(heads):
        key_means = {j: k[h, ids == j].mean(0) for j in np.unique(ids)}
        units = [[t] for t in range(seq)] if per_token else [list(np.flatnonzero(ids == j)) for j in np.unique(ids)]
        for rows in units:
            query = q[h, rows].mean(0)
            scores = {j: float(query @ mean) for j, mean in key_means.items()}
            for j in sorted(scores, key=lambda j: (-scores[j], j))[:top]:
                selected[np.ix_([h], rows, np.flatnonzero(ids == j))] = True
    return selected


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([((4, 6), (2, 3)), ((6, 4), (3, 2)), ((2, 4, 4), (2, 2, 2)), ((3, 2, 6), (1, 2, 3))]),
       extent=st.integers(1, 3), top=st.integers(1, 3), per_token=st.booleans(), seed=st.integers(0, 999))
def test_grid_region_routing_equals_a_loop_over_regions(shape, extent, top, per_token, seed):
    sizes, region = shape
    axes = ("t", "y", "x")[-len(sizes):]
    pattern = attnlang.parse(f"""pattern r() {{
    grid ({', '.join(axes)}) = ({', '.join(map(str, sizes))})
    route topk({top}, block = ({', '.join(map(str, region))}){', qblock = 1' if per_token else ''})
}}""")["r"]
    seq = extent * region[0] * int(np.prod(sizes[1:]))  # whole regions; the first axis grows with seq
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 2, seq, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    np.testing.assert_array_equal(pattern.reference_mask(seq, seq, heads=2, q=q, k=k),
                                  region_oracle_mask(sizes, region, top, seq, q, k, per_token))


def test_a_region_routing_refuses_lengths_that_cut_a_region(lib):
    pattern = lib["biformer"].bind(height=8, width=8, region=4, top=2)
    with pytest.raises(AttnlangError, match=r"every region must be whole, but the query length 40 is not a multiple of 32"):
        pattern.analyze(40, block=16)


def test_a_region_routed_block_mask_is_refused_in_token_order(lib):
    pattern = lib["biformer"].bind(height=8, width=8, region=4, top=2)
    q = k = torch.randn(1, 1, 64, 8)
    with pytest.raises(AttnlangError, match="is in the regions 4x4 layout"):
        pattern.analyze(64, block=16).to_flex(q=q, k=k)
