"""Routed kernels under the interpreter: the device selection stage against the reference's
routing, and the attention on its tables (forward, LSE, dq, dk, dv) against the reference.

The kernels score in float32 and the reference in float64, so two blocks whose scores tie to
within rounding may be chosen differently; the selection test allows exactly that (and
nothing else), and the attention is compared with the reference attending to the kernel's
own selection. Integer-valued tensors make scores exact in both, so there the selections
must be equal, ties (to the lower block) included.
"""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang.routing import _key_summary, _query_scores, candidate_blocks

from .conftest import needs_interpreter
from .flex_mods import ROUTED

pytestmark = needs_interpreter

SMALL = {"moba": ({"block": 16, "top": 2}, 72), "quest": ({"page": 8, "top": 3}, 72),
         "nsa_selected": ({"block": 16, "top": 3}, 72),
         "biformer": ({"height": 8, "width": 12, "region": 4, "top": 2}, 96),
         "vmoba": ({"frames": 2, "height": 4, "width": 8, "ct": 2, "cy": 2, "cx": 4, "threshold": 0.5, "top": 3}, 64)}
TIE = 1e-4  # scores this close (relative to their scale) may rank either way in float32


def routed(source: str):
    return attnlang.parse(source)["r"]


def tensors(seed, batch, heads, heads_kv, seq, dim=16, integer=False):
    gen = torch.Generator().manual_seed(seed)
    draw = (lambda *shape: torch.randint(-2, 3, shape, generator=gen).float()) if integer else (
        lambda *shape: torch.randn(*shape, generator=gen))
    return draw(batch, heads, seq, dim), draw(batch, heads_kv, seq, dim), draw(batch, heads_kv, seq, dim)


def shared_scores(pattern, q, k):
    """The reference's scores (float64) of each share group's units, summed over the group, and its candidates."""
    route = pattern.ir.route
    heads = q.shape[1]
    summary = tuple(s.repeat_interleave(heads // s.shape[1], dim=1) for s in _key_summary(k.double(), route.block,
                                                                                          route.pool))
    scores = _query_scores(q.double(), summary, route)
    group = {"head": 1, "group": heads // k.shape[1], "all": heads}[route.share]
    candidates = torch.from_numpy(candidate_blocks(pattern.ir, q.shape[2], k.shape[2], heads)).expand(scores.shape[1:])
    shape = (q.shape[0], heads // group, group) + scores.shape[2:]
    return scores.reshape(shape).sum(2), candidates.reshape(shape[1:]).any(1)


def assert_same_selection_but_near_ties(pattern, got, expected, q, k):
    """Selections (B, H, units, blocks) equal, except blocks whose score is within TIE of the
    unit's K-th best (or, with top_p, whose mass before them is within TIE of P)."""
    route = pattern.ir.route
    heads = q.shape[1]
    group = {"head": 1, "group": heads // k.shape[1], "all": heads}[route.share]
    differ = (got != expected).reshape(got.shape[0], heads // group, group, *got.shape[2:]).any(2)
    if not differ.any():
        return
    scores, candidates = shared_scores(pattern, q, k)
    scores = scores.masked_fill(~candidates, -math.inf)
    ranked, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    kth = ranked[..., min(route.top, ranked.shape[-1]) - 1:][..., :1]
    scale = scores[candidates.expand(scores.shape)].abs().max()
    near = (scores - kth).abs() <= TIE * scale
    if route.top_p is not None:
        mass = torch.softmax(ranked, -1).nan_to_num(0.0)
        before = torch.empty_like(mass).scatter_(-1, order, mass.cumsum(-1) - mass)
        near |= (before - route.top_p).abs() <= TIE
    assert bool(near[differ].all()), "the kernel's selection differs from the reference's beyond near-ties"


def check_kernel(pattern, q, k, v, block=16, exact_selection=False, schedule=None, through_lse=False):
    kernel = pattern.compile(block=block, route_schedule=schedule)
    selection = kernel.selection(q, k)
    routed, q_routed, k_routed = pattern, q, k
    if pattern.routes_regions:  # a selection's units and blocks are the region layout's
        routed, (q_order, k_order), _ = pattern._region_orders(q.shape[2], k.shape[2], q.shape[1])
        q_routed, k_routed = q[:, :, q_order], k[:, :, k_order]
    reference_selection = _reference_selection(routed, q_routed.double(), k_routed.double())
    if exact_selection:
        torch.testing.assert_close(selection, reference_selection, rtol=0, atol=0)
    else:
        assert_same_selection_but_near_ties(routed, selection, reference_selection, q_routed, k_routed)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = kernel(q, k, v, return_lse=True)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = pattern.reference_attention(qd, kd, vd, return_lse=True, selection=selection)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    grad_lse = torch.randn_like(lse) if through_lse else torch.zeros_like(lse)  # rows with no pair: none
    loss = (out * grad).sum() + torch.where(finite, lse * grad_lse, 0.0).sum()
    ref_loss = (ref_out * grad.double()).sum() + torch.where(finite, ref_lse * grad_lse.double(), 0.0).sum()
    got = torch.autograd.grad(loss, (q, k, v))
    expected = torch.autograd.grad(ref_loss, (qd, kd, vd))
    for name, a, b in zip(("dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3, msg=lambda m: f"{name}: {m}")


def _reference_selection(pattern, q, k):
    """The reference's selection (B, H, units, blocks), within each head's candidates."""
    from attnlang.routing import select_blocks
    candidates = torch.from_numpy(candidate_blocks(pattern.ir, q.shape[2], k.shape[2], q.shape[1]))
    return select_blocks(pattern.ir.route, candidates[None], q, k)


@pytest.mark.parametrize("name", ROUTED)
def test_every_routed_stdlib_pattern_matches_the_reference_forward_and_backward(name):
    params, seq = SMALL[name]
    pattern = attnlang.stdlib()[name].bind(**params)
    q, k, v = tensors(7, 1, 4, 2, seq)
    check_kernel(pattern, q, k, v, schedule="gathered" if pattern.ir.route.query_block == 1 else None)


@settings(max_examples=5, deadline=None)
@given(pool=st.sampled_from(["mean", "max", "minmax", "last"]), qpool=st.sampled_from(["mean", "max"]),
       share=st.sampled_from(["head", "group", "all"]), per_token=st.booleans(), top=st.integers(1, 5),
       block=st.sampled_from([8, 12, 16, 32]), seq=st.integers(17, 100), heads_kv=st.sampled_from([1, 2]),
       tile=st.sampled_from([16, 32]), seed=st.integers(0, 999), top_p=st.one_of(st.none(), st.floats(0.3, 0.95)),
       keep=st.sampled_from(["q // {b} == k // {b}", "k < 4", "false"]), gathered=st.booleans())
def test_drawn_routes_match_the_reference(pool, qpool, share, per_token, top, block, seq, heads_kv, tile, seed,
                                          top_p, keep, gathered):
    options = f"pool = {pool}, share = {share}" + (", qblock = 1" if per_token else f", qpool = {qpool}")
    selector = f"topk({top}" if top_p is None else f"top_p({top_p!r}, max = {top}"
    pattern = routed(f"""pattern r() {{
    mask q >= k
    route {selector}, block = {block}, {options}, keep = {keep.format(b=block)})
}}""")
    q, k, v = tensors(seed, 1, 4, heads_kv, seq)
    check_kernel(pattern, q, k, v, block=tile, schedule="gathered" if per_token and gathered else "tiles")


# (source, block, share, top, seq, tile, heads, heads_kv): the edges of the gathered kernels
GATHERED_EDGES = [
    ("mask q >= k\n    score 20 * tanh(score / 20)", 12, "head", 2, 45, 16, 2, 1),  # a score mod; 12 on tiles of 16
    ("mask q >= k\n    bias -0.5 * h * (q - k)", 40, "group", 2, 64, 16, 4, 2),  # reads h; a GQA group's selection
    ("mask q >= k", 64, "all", 5, 50, 16, 2, 1),  # top above the blocks, keep = false
    ("mask k < q - 20", 8, "head", 3, 45, 32, 2, 1),  # rows with no pair; blocks of 8 on tiles of 32
]


@pytest.mark.parametrize("source, block, share, top, seq, tile, heads, heads_kv", GATHERED_EDGES)
def test_the_gathered_schedule_matches_the_reference_through_the_lse(source, block, share, top, seq, tile, heads,
                                                                     heads_kv):
    keep = "false" if "k < q - 20" in source or share == "all" else f"q // {block} == k // {block}"
    pattern = routed(f"""pattern r() {{
    {source}
    route topk({top}, block = {block}, qblock = 1, share = {share}, keep = {keep})
}}""")
    q, k, v = tensors(seq, 1, heads, heads_kv, seq)
    check_kernel(pattern, q, k, v, block=tile, schedule="gathered", through_lse=True)


@pytest.mark.parametrize("qblock, schedule", [("", None), (", qblock = 1", "tiles"), (", qblock = 1", "gathered")])
def test_a_keep_that_reads_the_head_where_the_mask_does_not(qblock, schedule):
    """The kept tiles differ per head while the mask's map is one for all: each head keeps its own."""
    pattern = routed(f"""pattern r() {{
    mask q >= k
    route topk(1, block = 16{qblock}, keep = h % 2 == 0 and q // 32 == k // 32)
}}""")
    q, k, v = tensors(7, 1, 2, 2, 64)
    check_kernel(pattern, q, k, v, block=16, schedule=schedule)


@pytest.mark.parametrize("pool, per_token", [("mean", False), ("max", True), ("minmax", False), ("last", True),
                                             ("mean", True)])
def test_exact_ties_go_to_the_lower_block_as_in_the_reference(pool, per_token):
    # integer tensors: every score is exact in float32 and float64, and many tie
    pattern = routed(f"""pattern r() {{
    mask q >= k
    route topk(2, block = 8, pool = {pool}{', qblock = 1' if per_token else ''}, keep = q // 8 == k // 8)
}}""")
    q, k, v = tensors(3, 1, 2, 1, 64, dim=16, integer=True)
    check_kernel(pattern, q, k, v, exact_selection=True, schedule="gathered" if per_token else None)


def test_the_standalone_module_routes_on_its_own_device_tables():
    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    pattern = attnlang.stdlib()["moba"].bind(block=16, top=2)
    module = load_module(standalone_source(pattern.ir, (16, 16)), "routed_standalone", interpret=True)
    q, k, v = tensors(11, 1, 2, 1, 75)
    out = module.attention(q, k, v, block_m=16, block_n=16)
    selection = pattern.compile(block=16).selection(q, k)
    torch.testing.assert_close(out.double(), pattern.reference_attention(q.double(), k.double(), v.double(),
                                                                         selection=selection), rtol=1e-4, atol=1e-4)


def test_a_selection_is_at_most_top_blocks_per_unit_and_reads_no_score_matrix():
    pattern = attnlang.stdlib()["moba"].bind(block=16, top=2)
    kernel = pattern.compile(block=16)
    q, k, _ = tensors(5, 1, 2, 1, 80)
    module = kernel._module(q.device)
    maps = kernel.route_maps(80, 80, {}, 1, q.device, 2)
    chosen = module.select(q, k, {}, maps["candidates"])
    assert chosen.shape == (1, 2, 80, 2)  # units x top indices: O(N K), never N x blocks scores
    assert bool((kernel.selection(q, k).sum(-1) <= 2).all())


@pytest.mark.parametrize("name", ["moba", "nsa_selected"])
def test_a_block_mask_from_the_device_stage_attends_as_the_kernel_does(name):
    import warnings

    from torch.nn.attention.flex_attention import flex_attention
    params, seq = SMALL[name]
    pattern = attnlang.stdlib()[name].bind(**params)
    q, k, v = tensors(9, 1, 4, 2, seq)
    block_mask = pattern.analyze(seq, heads=4, block=16).to_flex(q=q, k=k, stage="device")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager flex_attention on CPU
        out = flex_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), block_mask=block_mask)
    selection = pattern.compile(block=16).selection(q, k)
    expected = pattern.reference_attention(q.double(), k.double(), v.double(), selection=selection)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_the_command_line_writes_routed_modules(tmp_path, capsys):
    from attnlang.cli import main
    path = tmp_path / "moba.py"
    assert main(["compile", "stdlib", "moba", "-D", "block=16", "-D", "top=2", "--block", "16", "-o", str(path)]) == 0
    assert "ROUTE = dict(top=2, block=16, qblock=1" in path.read_text()
    regions = tmp_path / "biformer.py"
    assert main(["compile", "stdlib", "biformer", "-D", "height=8", "-D", "width=8", "-D", "region=4", "--block", "16",
                 "--seq", "64", "-o", str(regions)]) == 0
    assert "layout regions 4x4's order" in capsys.readouterr().out  # its regions route in their own layout


def test_per_token_routing_runs_either_schedule_as_asked():
    pattern = attnlang.stdlib()["moba"].bind(block=16, top=2)
    q, k, v = tensors(13, 1, 2, 1, 70)
    assert "gathered" in pattern.compile(block=16, route_schedule="gathered")._launch_tables(q, k, {})
    assert "gathered" not in pattern.compile(block=16, route_schedule="tiles")._launch_tables(q, k, {})
    check_kernel(pattern, q, k, v, schedule="tiles")  # the bitmap path, per token


@pytest.mark.parametrize("source, heads", [
    ("mask q >= k\n    route topk(3, block = 512, qblock = 1, keep = q // 512 == k // 512)", 2),  # MoBA
    ("mask q >= k\n    route topk(64, block = 16, qblock = 1, pool = minmax, keep = q // 16 == k // 16)", 2),  # Quest
    ("mask q >= k and (h == 0 or k > 3)\n    route topk(2, block = 64, qblock = 1)", 3),  # a map per head
])
def test_the_kernel_picks_the_schedule_the_simulator_prices_faster(source, heads):
    pattern = routed(f"pattern r() {{\n    {source}\n}}")
    q = torch.zeros(1, heads, 4096, 64, device="meta")
    times = {schedule: attnlang.simulate(pattern, seq=4096, heads=heads, head_dim=64, dtype="fp32", block=64,
                                         backward=True, route_schedule=schedule).time_ms
             for schedule in ("gathered", "tiles")}
    assert pattern.compile(block=64).schedule_for(q, q) == min(times, key=times.get)
    assert attnlang.simulate(pattern, seq=4096, heads=heads, head_dim=64, dtype="fp32", block=64,
                             backward=True).time_ms == pytest.approx(min(times.values()))


def test_the_gathered_schedule_is_not_picked_past_a_quarter_of_the_device_memory():
    from attnlang.simulator import route_schedule_for
    block_map = attnlang.stdlib()["moba"].analyze(65536, heads=16, block=(128, 64))
    assert route_schedule_for(block_map, batch=1) == "gathered"  # 1.6 GB of partial outputs
    assert route_schedule_for(block_map, batch=16) == "tiles"  # 26 GB of them, over 80 GB / 4


def test_the_schedule_is_picked_with_the_inputs_and_in_a_layout():
    scored = routed("""pattern r(block = 64) {
    input s: float[heads, blocks(1, block)]
    mask q >= k
    route topk(3, block = block, qblock = 1, by = s)
}""")
    q = torch.zeros(1, 2, 4096, 64, device="meta")
    scores = {"s": torch.zeros(2, 4096, 64)}
    assert scored.compile(block=64).schedule_for(q, q, scores) in ("gathered", "tiles")  # the map needs s
    vmoba = attnlang.stdlib()["vmoba"]
    assert vmoba.compile(block=64).schedule_for(q, q) in ("gathered", "tiles")  # a LayoutKernel: its region order
    assert vmoba.compile(block=64, route_schedule="tiles").schedule_for(q, q) == "tiles"
    with pytest.raises(AttributeError):
        vmoba.compile(block=64).route_schedule = "tiles"  # a compile option, part of the cache key
    with pytest.raises(attnlang.AttnlangError, match="does not route"):
        attnlang.simulate(attnlang.stdlib()["causal"], seq=1024, route_schedule="tiles")


def test_a_schedule_that_cannot_run_is_refused_by_name():
    biformer = attnlang.stdlib()["biformer"].bind(height=8, width=8, region=4)
    with pytest.raises(attnlang.AttnlangError, match="per-token routing"):
        biformer.compile(block=16, route_schedule="gathered")
    with pytest.raises(attnlang.AttnlangError, match="route_schedule must be"):
        attnlang.stdlib()["moba"].compile(block=16, route_schedule="blocks")
    with pytest.raises(attnlang.AttnlangError, match="does not route"):
        attnlang.stdlib()["causal"].compile(block=16, route_schedule="tiles")


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), groups=st.integers(1, 3), units=st.integers(1, 40), top=st.integers(1, 4),
       blocks=st.integers(1, 9), block_m=st.sampled_from([16, 32]), seed=st.integers(0, 999))
def test_the_gathered_lists_give_every_choice_to_exactly_one_program_of_its_block(batch, groups, units, top, blocks,
                                                                                  block_m, seed):
    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    module = load_module(standalone_source(attnlang.stdlib()["moba"].bind(block=16, top=2).ir, (16, 16)),
                         "routed_standalone", interpret=True)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randint(-1, blocks, (batch, groups, units, top), generator=gen, dtype=torch.int32)
    lists = module.gathered_lists(chosen, blocks, block_m)
    order, offsets, work = lists["order"].long(), lists["offsets"].long(), lists["work"].long()
    for group, choices in enumerate(chosen.reshape(batch * groups, units * top).long()):
        seen = []
        for block, first, end in work[group].tolist():
            if block < 0:
                continue
            assert offsets[group, block] <= first < end == offsets[group, block + 1]
            entries = order[group, first:min(first + block_m, end)]  # a program's BLOCK_M lanes
            assert bool((choices[entries] == block).all())  # rows that chose this block, and only them
            assert entries.tolist() == sorted(entries.tolist())
            seen += entries.tolist()
        assert sorted(seen) == torch.nonzero(choices >= 0).flatten().tolist()  # every choice once


def tile_lists_by_loops(chosen, static, kept, seq_q, seq_k, heads, tile_m, tile_n, qblock, block):
    """Per (b, h, tile row): the FULL and the PARTIAL tile columns a selection visits, and per (b,
    h, tile column) the tile rows, by the rule written out tile by tile: visited where the static
    tile has pairs and a chosen block reaches it or keep has pairs; FULL where the static tile is
    FULL and every (unit, block) pair over it was chosen, or keep allows all of it."""
    batch, shared, units, top = chosen.shape
    tiles_m, tiles_n = -(-seq_q // tile_m), -(-seq_k // tile_n)
    forward, backward = {}, {}
    for b in range(batch):
        for h in range(heads):
            picked = [set(row) - {-1} for row in chosen[b, h // (heads // shared)].tolist()]
            for r in range(tiles_m):
                q_units = range(r * tile_m // qblock, (min((r + 1) * tile_m, seq_q) - 1) // qblock + 1)
                for n in range(tiles_n):
                    k_blocks = range(n * tile_n // block, (min((n + 1) * tile_n, seq_k) - 1) // block + 1)
                    kind = int(static[b % static.shape[0], h % static.shape[1], r, n])
                    keep = int(kept[b % kept.shape[0], h % kept.shape[1], r, n])
                    hits = sum(c in picked[u] for u in q_units for c in k_blocks)
                    if kind == 0 or (hits == 0 and keep == 0):
                        continue
                    full = kind == 2 and (hits == len(q_units) * len(k_blocks) or keep == 2)
                    forward.setdefault((b, h, r), ([], []))[0 if full else 1].append(n)
                    backward.setdefault((b, h, n), ([], []))[0 if full else 1].append(r)
    return forward, backward


def listed_tiles(tables, direction):
    """A table's rows as {(b, h, row): (FULL columns, PARTIAL columns)}, runs expanded."""
    (full_num, runs), (partial_num, partial) = tables[direction]
    rows = {}
    for (b, h, row) in itertools.product(*map(range, full_num.shape)):
        full = [first + i for first, count in runs[b, h, row, :full_num[b, h, row]].tolist() for i in range(count)]
        listed = (full, partial[b, h, row, :partial_num[b, h, row]].tolist())
        if listed != ([], []):
            rows[(b, h, row)] = listed
    return rows


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 2), heads_share=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
       seq_q=st.integers(1, 130), seq_k=st.integers(1, 130), qblock=st.sampled_from([1, 8, 12, 40]),
       block=st.sampled_from([8, 12, 16, 40]), top=st.integers(1, 4), tile=st.sampled_from([(16, 16), (32, 16)]),
       per_map=st.sampled_from([(1, 1), (1, 0), (0, 1), (0, 0)]), kept_per_head=st.booleans(),
       chunk=st.sampled_from([1, 40, 1 << 20]), unchosen=st.sampled_from([0.2, 0.9]), seed=st.integers(0, 999))
def test_the_tile_major_tables_list_the_tiles_the_selection_reaches(batch, heads_share, seq_q, seq_k, qblock, block,
                                                                    top, tile, per_map, kept_per_head, chunk,
                                                                    unchosen, seed):
    """The sparse tables (built a chunk of heads at a time, no tile map) against the rule, tile
    by tile; and the dense tile map the BlockMask export reads says the same."""
    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    module = load_module(standalone_source(attnlang.stdlib()["moba"].bind(block=16, top=2).ir, (16, 16)),
                         "routed_tables_standalone", interpret=True)
    heads, share = heads_share
    gen = torch.Generator().manual_seed(seed)
    units, blocks = -(-seq_q // qblock), -(-seq_k // block)
    distinct = torch.argsort(torch.rand(batch, heads // share, units, max(blocks, top), generator=gen), dim=-1)
    dropped = torch.rand(distinct[..., :top].shape, generator=gen) < unchosen  # sparse selections show keep's tiles
    chosen = torch.where((distinct[..., :top] >= blocks) | dropped, -1, distinct[..., :top]).to(torch.int32)
    map_shape = (batch if per_map[0] else 1, heads if per_map[1] else 1, -(-seq_q // tile[0]), -(-seq_k // tile[1]))
    static = torch.randint(0, 3, map_shape, generator=gen).to(torch.int8)
    kept_shape = (map_shape[0], heads if kept_per_head else map_shape[1]) + map_shape[2:]  # keep may read h alone
    kept = torch.where(torch.rand(kept_shape, generator=gen) < 0.3, static, 0)
    kept = torch.where((kept == 2) & (torch.rand(kept_shape, generator=gen) < 0.5), 1, kept).to(torch.int8)
    route, entry_chunk = module.ROUTE, module.ENTRY_CHUNK
    module.ROUTE, module.ENTRY_CHUNK = dict(route, qblock=qblock, block=block, top=top), {"cpu": chunk}
    try:
        tables = module.routed_tile_tables(chosen, static, kept, seq_q, seq_k, heads, *tile)
        dense = module.routed_kinds(chosen, static, kept, seq_q, seq_k, heads, *tile)
    finally:
        module.ROUTE, module.ENTRY_CHUNK = route, entry_chunk
    forward, backward = tile_lists_by_loops(chosen, static, kept, seq_q, seq_k, heads, *tile, qblock, block)
    assert listed_tiles(tables, "forward") == forward
    assert listed_tiles(tables, "backward") == backward
    assert (tables["map_batch"], tables["map_heads"]) == (batch, heads)
    assert {key: (full, partial) for key, (full, partial) in forward.items()} == {
        (b, h, r): ([n for n in range(dense.shape[3]) if dense[b, h, r, n] == 2],
                    [n for n in range(dense.shape[3]) if dense[b, h, r, n] == 1])
        for b, h, r in itertools.product(*map(range, dense.shape[:3])) if bool((dense[b, h, r] != 0).any())}


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.integers(0, 60), max_size=80), weighted=st.booleans(), space=st.sampled_from([61, 1000, None]))
def test_summing_by_key_counts_or_sorts_alike(keys, weighted, space):
    """`_summed` (the tables' group-by), by a dense count or by a sort, against a dict."""
    from attnlang.codegen.runtime import load_module
    from attnlang.codegen.template import standalone_source
    module = load_module(standalone_source(attnlang.stdlib()["moba"].bind(block=16, top=2).ir, (16, 16)),
                         "routed_tables_standalone", interpret=True)
    weights = [3 * key % 7 for key in keys]
    expected = {}
    for key, weight in zip(keys, weights):
        expected[key] = expected.get(key, 0) + (weight if weighted else 1)
    distinct, sums = module._summed(torch.tensor(keys, dtype=torch.int64),
                                    torch.tensor(weights, dtype=torch.int64) if weighted else None, space)
    assert distinct.tolist() == sorted(expected) and sums.tolist() == [expected[key] for key in sorted(expected)]
