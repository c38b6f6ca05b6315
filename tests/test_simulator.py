"""The speedup simulator: properties that hold for any calibration (no GPU needed)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import EMPTY
from attnlang import ir, simulator
from attnlang.simulator import HARDWARE, ir_cost, load_hardware, schedule_programs, simulate


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


def test_dense_speedup_is_exactly_one(lib):
    dense = attnlang.parse("pattern dense() { mask true }")["dense"]
    for backward in (False, True):
        result = simulate(dense, seq=8192, heads=8, backward=backward)
        assert result.speedup == 1.0 and result.upper_bound == 1.0


def test_133_equal_programs_on_132_sms_take_two_waves():
    assert schedule_programs(np.ones(132), 132) == 1.0
    assert schedule_programs(np.ones(133), 132) == 2.0
    assert schedule_programs(np.ones(133), 132, "fluid") == pytest.approx(133 / 132)


def test_a_launch_on_133_tiles_shows_the_second_wave(lib):
    """133 query tiles of one head on 132 SMs: the second wave costs a whole program."""
    hw = load_hardware("h100")
    pattern = lib["block_local"].bind(block=128)
    short = simulate(pattern, seq=132 * 128, heads=1, hardware=hw, block=(128, 128))
    long = simulate(pattern, seq=133 * 128, heads=1, hardware=hw, block=(128, 128))
    assert long.time_ms == pytest.approx(2 * short.time_ms)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.0, 0.9), backward=st.booleans(),
       placement=st.sampled_from(["greedy", "longest-first", "fluid"]))
def test_removing_tiles_never_increases_time(lib, seed, fraction, backward, placement):
    base = lib["streaming"].bind(window=700, sinks=3).analyze(6000, heads=4, block=(128, 64))
    rng = np.random.default_rng(seed)
    kinds = base.kinds.copy()
    kinds[(kinds != EMPTY) & (rng.random(kinds.shape) < fraction)] = EMPTY
    fewer = attnlang.BlockMap(kinds, base.seq_q, base.seq_k, base.heads, base.block_q, base.block_k, base.pattern)
    before = simulate(base, heads=4, backward=backward, placement=placement)
    after = simulate(fewer, heads=4, backward=backward, placement=placement)
    assert after.time_ms <= before.time_ms + 1e-12


def test_causal_is_below_the_ideal_two_by_its_imbalance(lib):
    result = simulate(lib["causal"], seq=65536, heads=16)
    assert result.upper_bound == pytest.approx(2.0, rel=0.01)
    assert result.speedup < result.upper_bound and result.breakdown["imbalance"] > 0
    persistent = simulate(lib["causal"], seq=65536, heads=16, placement="longest-first")
    assert persistent.time_ms <= result.time_ms


@pytest.mark.parametrize("name", ["causal", "streaming", "dilated", "neighborhood2d", "duo"])
def test_compute_only_with_partial_as_full_gives_the_tile_count_bound(lib, name):
    result = simulate(lib[name], seq=16384, heads=4, compute_only=True, partial_as_full=True, placement="fluid")
    assert result.speedup == pytest.approx(result.upper_bound, rel=1e-9)


def test_mask_cost_makes_partial_tiles_dearer(lib):
    strided = lib["strided"].bind(stride=64)
    priced = simulate(strided, seq=16384)
    as_full = simulate(strided, seq=16384, partial_as_full=True)
    assert priced.time_ms > as_full.time_ms


def test_ir_cost_weighs_operations_by_kind(lib):
    assert ir_cost(lib["causal"].ir.mask) == simulator.OP_COST[ir.BinaryOp.GE]
    assert ir_cost(lib["dilated"].ir.mask) > ir_cost(lib["sliding_window"].ir.mask)  # % is dear
    assert ir_cost(lib["softcap"].ir.logit) > ir_cost(lib["causal"].ir.logit) == 0


def probe(body: str):
    return attnlang.parse(f"pattern probe() {{ {body} }}")["probe"].ir


def test_ir_cost_charges_q_alone_per_row_and_k_alone_per_column():
    """What the compiled kernels do (benchmarks/results/op_costs.json): `q % 7` is a [BLOCK_M]
    vector, `(q - k) % 7` a [BLOCK_M, BLOCK_N] tile."""
    per_pair = ir_cost(probe("mask (q - k) % 7 != 3").mask, (128, 64))
    per_row = ir_cost(probe("mask q % 7 != k").mask, (128, 64))
    per_column = ir_cost(probe("mask q != k % 7").mask, (128, 64))
    modulo, compare = simulator.OP_COST[ir.BinaryOp.MOD], simulator.OP_COST[ir.BinaryOp.NE]
    assert per_pair == pytest.approx(1 + modulo + compare)
    assert per_row == pytest.approx(modulo / 64 + compare)
    assert per_column == pytest.approx(modulo / 128 + compare)
    assert ir_cost(probe("mask h % 2 == 0").mask) == 0  # once per program


def test_the_op_weights_are_the_measured_sass_counts():
    """OP_COST and TILE_LOOP are read off benchmarks/results/op_costs.json (sm_90, 128x64):
    the model must predict each probe's measured forward instructions per pair within 20%
    (the backward's within 35%)."""
    import json
    from pathlib import Path
    data = json.loads((Path(__file__).parents[1] / "benchmarks/results/op_costs.json").read_text())
    for name, body in data["probes"].items():
        pattern = attnlang.parse(f"pattern probe() {{\n    {body}\n}}")["probe"].ir
        model = simulator._ModelInstructions(pattern, 128, 64, partial_as_full=False)
        measured = data["results"][name]["per_pair"]["forward"]
        for kind, count in (("full", model.full("forward")), ("partial", model.partial("forward"))):
            assert count * 32 / (128 * 64) == pytest.approx(measured[kind], rel=0.2), (name, kind)
        for kernel in ("backward_kv", "backward_q"):  # the slope's cost varies more: sqrt's needs a division
            measured = data["results"][name]["per_pair"][kernel]["full"]
            assert model.full(kernel) * 32 / (128 * 64) == pytest.approx(measured, rel=0.35), (name, kernel)


def test_short_rows_pay_their_program_costs_as_published_kernels_do(lib):
    """Physical plausibility. Dense attention at batch x seq = 16K (FA3 paper, H100, d = 128):
    Triton's fused-attention kernel runs at 0.818 of its 16K rate at N = 512 and 0.942 at 1K,
    so attnlang's (a Triton kernel too) must not be predicted faster there. FlashAttention-3
    with a native sliding window runs at 0.77 of its causal rate at 32K: a 1024 window must not
    be predicted closer to causal's rate."""
    dense = attnlang.parse("pattern dense() { mask true }")["dense"]

    def rate(pattern, seq, batch=1):
        result = simulate(pattern, seq=seq, batch=batch, hardware="h100", block=(128, 64))
        return pattern.analyze(seq, block=(128, 64)).pairs(exact=False) * batch / result.time_ms

    at_16k = rate(dense, 16384)
    assert rate(dense, 512, batch=32) / at_16k <= 0.818
    assert rate(dense, 1024, batch=16) / at_16k <= 0.942
    assert rate(lib["sliding_window"].bind(window=1024), 32768) / rate(lib["causal"], 32768) <= 0.77


def test_breakdown_sums_to_the_time(lib):
    result = simulate(lib["sliding_window"].bind(window=2048), seq=32768, backward=True)
    assert sum(result.breakdown.values()) == pytest.approx(result.time_ms, rel=1e-9)


@pytest.mark.parametrize("name", HARDWARE)
def test_profiles_load_and_validate(name):
    hw = load_hardware(name)
    assert hw.sms > 0 and 0 < hw.efficiency["mma"] <= 1


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("sms = 132", ""), "missing 'sms'"),
    (lambda text: text.replace("sms = 132", "sms = -4"), "sms must be a positive number"),
    (lambda text: text.replace("mma = 0.70", "mma = 1.5"), "efficiency.mma must be at most 1"),
    (lambda text: text.replace("memory = 0.80", ""), "missing efficiency.memory"),
    (lambda text: text + "\\n[[[", "is not valid"),
    (lambda text: text.replace("compute_capability = 90", "compute_capability = \"9.0\""),
     "compute_capability must be an int such as 80 or 90"),
])
def test_bad_profiles_are_clear_errors(tmp_path, edit, message):
    from importlib import resources
    text = resources.files("attnlang").joinpath("hardware", "h100.toml").read_text()
    path = tmp_path / "bad.toml"
    path.write_text(edit(text))
    with pytest.raises(attnlang.AttnlangError, match=message):
        load_hardware(str(path))


def test_unknown_hardware_suggests_a_name():
    with pytest.raises(attnlang.AttnlangError, match="did you mean 'h100'"):
        load_hardware("h10")


def test_simulate_cli_prints_a_table_and_plots(tmp_path, capsys):
    from attnlang.cli import main
    plot = tmp_path / "speedup.png"
    assert main(["simulate", "stdlib", "causal,streaming", "--seq", "4096,16384", "--hw", "h200",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "streaming(window=1024, sinks=4)" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["simulate", "stdlib", "causal", "--seq", "4096", "--json", "--backward"]) == 0
    import json
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["backward"] and {"time_ms", "dense_time_ms", "speedup", "upper_bound", "utilization",
                                    "breakdown"} <= set(rows[0])


def test_block_auto_picks_the_fastest_simulated_tile_shape(lib):
    from attnlang.simulator import choose_block
    choice = choose_block(lib["sliding_window"], seq=8192, heads=8)
    fastest = min((t, b) for b, t in choice.times_ms.items() if t is not None)[1]
    assert choice.block == fastest and "simulated at N=8192 on h100" in choice.reason
    import torch
    kernel = lib["sliding_window"].compile(heads=8, head_dim=128, dtype=torch.bfloat16, block="auto", tune_seq=8192)
    assert (kernel.block_m, kernel.block_n) == choice.block and kernel.block_choice.reason == choice.reason


def test_block_auto_skips_shapes_that_do_not_fit_in_shared_memory(lib):
    from attnlang.simulator import choose_block
    choice = choose_block(lib["causal"], seq=4096, head_dim=256, hardware="l40s")
    assert choice.times_ms[(128, 128)] is None and "do not fit (shared memory or registers)" in choice.reason


@pytest.mark.parametrize("hardware, head_dim, offered", [
    # what the compiled kernels allow (benchmarks/results/launch_configs.json): 64x128 and 128x128
    # spill in dK/dV on A100; on H100 at d = 128 too (1.4 and 3.2 KB)
    ("a100", 64, {(128, 64), (64, 64), (128, 32), (64, 32), (32, 32)}),
    ("a100", 128, {(128, 64), (64, 64), (128, 32), (64, 32), (32, 32)}),
    ("h100", 128, {(128, 64), (64, 64), (128, 32), (64, 32), (32, 32)}),
])
def test_block_auto_offers_only_shapes_that_compile_within_the_limits(lib, hardware, head_dim, offered):
    from attnlang.simulator import choose_block
    choice = choose_block(lib["causal"], seq=4096, head_dim=head_dim, hardware=hardware)
    assert {b for b, t in choice.times_ms.items() if t is not None} == offered


def test_launch_stages_follow_the_architecture_limit():
    from attnlang.codegen.kernel_template import SHARED_LIMITS, launch_for, shared_bytes
    for capability in (80, 89, 90):
        for block in ((64, 64), (128, 64), (128, 128)):
            launch = launch_for(*block, 128, capability)
            stages = {config["num_stages"] for config in launch.values()}
            two_fit = all(shared_bytes(k, *block, 128, 2, 2, capability) <= SHARED_LIMITS[capability] for k in launch)
            assert stages == ({2} if two_fit else {1})
    assert launch_for(128, 64)["backward_kv"]["num_warps"] == 8 and launch_for(64, 128)["forward"]["num_warps"] == 4


def test_compiled_instruction_counts_price_the_tiles(lib):
    from attnlang.simulator import TileInstructions
    pattern = lib["sliding_window"].bind(window=512)
    light = TileInstructions("sm_90", {k: (2000, 3000) for k in ("forward", "backward_kv", "backward_q")})
    heavy = TileInstructions("sm_90", {k: (4000, 6000) for k in ("forward", "backward_kv", "backward_q")})
    a, b = (simulate(pattern, seq=8192, costs=c, backward=True) for c in (light, heavy))
    assert b.breakdown["elementwise"] == pytest.approx(2 * a.breakdown["elementwise"])
    assert a.breakdown["mma"] == pytest.approx(b.breakdown["mma"])
    with pytest.raises(attnlang.AttnlangError, match="costs must be 'model', 'compiled' or a TileInstructions"):
        simulate(pattern, seq=8192, costs="sass")
    with pytest.raises(attnlang.AttnlangError, match="pass the Pattern, not a BlockMap"):
        simulate(pattern.analyze(8192, block=(128, 64)), costs="compiled")


def test_the_gathered_schedule_is_priced_by_its_own_kernels_counts(lib):
    """Per-token routing's gathered programs run gathered_forward and its backward kernels:
    compiled counts charge them those kernels' loops, not the tile-major kernels'."""
    from attnlang.simulator import TileInstructions
    pattern = lib["moba"]
    tile_major = {k: (2000, 3000) for k in ("forward", "backward_kv", "backward_q")}
    light = TileInstructions("sm_90", tile_major | {f"gathered_{k}": (3000, 3000) for k in tile_major})
    heavy = TileInstructions("sm_90", tile_major | {f"gathered_{k}": (6000, 6000) for k in tile_major})
    a, b = (simulate(pattern, seq=16384, costs=c, backward=True, route_schedule="gathered") for c in (light, heavy))
    assert b.breakdown["gathered"] > 1.05 * a.breakdown["gathered"]  # mma and memory overlap the rest
    assert a.time_ms - a.breakdown["gathered"] == pytest.approx(b.time_ms - b.breakdown["gathered"])
    unmatched = TileInstructions("sm_90", tile_major)  # no gathered kernels compiled: the model prices them
    modelled = simulate(pattern, seq=16384, backward=True, route_schedule="gathered")
    assert simulate(pattern, seq=16384, costs=unmatched, backward=True,
                    route_schedule="gathered").breakdown["gathered"] == pytest.approx(modelled.breakdown["gathered"])


def test_compiled_costs_pick_per_token_routings_schedule_by_each_schedules_kernels(lib, monkeypatch):
    """simulate(costs="compiled") with the schedule left to it compiles each schedule's kernels
    and prices each by its own: a schedule made heavy in its compiled counts loses."""
    import attnlang.simulator as simulator
    from attnlang.simulator import TileInstructions
    kernels = ("forward", "backward_kv", "backward_q")
    compiled = []

    def fake(pattern, hw, block, head_dim, dtype, seq, inputs=None, seq_k=None, route_schedule=None):
        compiled.append((route_schedule, seq, seq_k))
        heavy = {"tiles": 1, "gathered": 100}[route_schedule] if route_schedule else 1
        return TileInstructions("sm_90", {k: (2000 * heavy, 3000 * heavy) for k in kernels} |
                                {f"gathered_{k}": (3000 * heavy, 3000 * heavy) for k in kernels})

    monkeypatch.setattr(simulator, "compiled_instructions", fake)
    result = simulate(lib["moba"], seq=16384, costs="compiled", backward=True)
    assert result.breakdown["gathered"] == 0.0  # tile-major: the gathered kernels were made heavy
    assert {c[0] for c in compiled} == {"gathered", "tiles"}
    grid = attnlang.parse("""pattern g() {
    grid (y, x) = (6, 10)
    input doc: int[tokens]
    mask abs(q.y - k.y) <= 1 and doc[q] == doc[k]
}""")["g"]
    compiled.clear()
    simulate(grid, seq=60, block=(16, 16), layout="4x4", inputs={"doc": [0] * 30 + [1] * 30}, costs="compiled")
    assert compiled == [(None, 60, 60)]  # the row-major kernel at the inputs' own lengths, not the padded 64


def test_calibration_recovers_known_efficiencies(lib):
    """Synthetic 'measurements' made by the model with known parameters are fitted back."""
    import dataclasses
    from attnlang.calibrate import Measurement, fit_efficiency
    hw = load_hardware("h100")
    truth = dataclasses.replace(hw, efficiency={**hw.efficiency, "mma": 0.55, "memory": 0.6, "tile_overhead_ns": 200})
    dense = attnlang.parse("pattern dense() { mask true }")["dense"]
    measurements = [Measurement(p, n, backward, simulate(p, seq=n, hardware=truth, backward=backward).time_ms)
                    for p in (dense, lib["causal"], lib["sliding_window"].bind(window=1024))
                    for n in (2048, 8192) for backward in (False, True)]
    fitted, error = fit_efficiency(hw, measurements)
    assert error < 0.02
    # MMA and memory efficiency trade off in the model, so check predictions, not parameters:
    # a held-out length is predicted within 3%
    for pattern in (dense, lib["causal"]):
        predicted = simulate(pattern, seq=4096, hardware=fitted, backward=True).time_ms
        actual = simulate(pattern, seq=4096, hardware=truth, backward=True).time_ms
        assert abs(predicted / actual - 1) < 0.03


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_calibrate_without_a_gpu_says_so(tmp_path, capsys):
    from attnlang.cli import main
    assert main(["calibrate", "--hw", "h100", "--out", str(tmp_path / "p.json")]) == 2
    assert "calibration times kernels on a CUDA GPU, and none is available here" in capsys.readouterr().err
