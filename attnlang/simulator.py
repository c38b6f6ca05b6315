"""Predict a pattern's attention time and speedup on a GPU from its block map.

Cost of one tile (a BLOCK_M x BLOCK_N block of pairs, head dim D) on one SM:
    MMA          4·bm·bn·D flops forward (14 backward: dK/dV 8, dQ 6) at the SM's share of
                 peak tensor throughput × `efficiency.mma`
    instructions the tile loop's thread instructions per pair at the SM's issue rate ×
                 `efficiency.elementwise`: a FULL tile's loop (softmax, MMA issue, converts)
                 plus the logit, and on PARTIAL tiles the mask with its bounds and select.
                 `costs="model"` counts them from the IR (`ir_cost`, weights measured from
                 compiled SASS, benchmarks/results/op_costs.json; an operation on `q` or `k`
                 alone is charged once per row or column); `costs="compiled"` reads them from
                 the pattern's own compiled kernels
    memory       the K and V tiles (Q and dO backward) at the SM's share of HBM bandwidth ×
                 `efficiency.memory`; only the part not hidden behind compute counts
    overhead     `tile_overhead_ns` per visited tile (index load, pipeline bubble)
A program (one query tile of one head; one key tile in dK/dV) costs the sum of its tiles plus
what no tile hides: its own tiles' load (Q; K and V in dK/dV), the pipeline's first K/V tile,
the epilogue's stores, all at the SM's share of bandwidth, and `program_overhead_ns` (launch
and set-up). Programs are placed on `sms × programs_per_sm` slots the way the grid launches
them — in launch order, each on the slot that frees first — so waves and tail imbalance show.
Longest-first placement models a persistent kernel; "fluid" placement (perfect balance) and
`compute_only` give the NATTEN-style bound.
"""

from __future__ import annotations

import heapq
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import ir
from .analysis import FULL, PARTIAL, BlockMap
from .errors import AttnlangError

__all__ = ["Hardware", "SimResult", "TileInstructions", "simulate", "ir_cost", "schedule_programs", "HARDWARE",
           "load_hardware", "compiled_instructions"]

HARDWARE = ("h100", "h200", "a100", "b200", "l40s")
REQUIRED = ("name", "sms", "bf16_tflops", "fp32_tflops", "hbm_gb_per_s", "l2_mib", "smem_kib_per_sm", "clock_ghz")
EFFICIENCY = ("mma", "elementwise", "memory", "tile_overhead_ns", "program_overhead_ns", "programs_per_sm")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
ISSUE_PER_CLOCK = 4     # warp instructions an SM issues per clock: 4 schedulers (sm_70 and later)
WARP = 32

# Thread instructions per score pair, compiled for sm_90 (d = 128, bf16, 128x64 tiles) and
# counted in SASS by benchmarks/op_costs.py (benchmarks/results/op_costs.json).
# A FULL tile's loop of causal (no logit, no mask): online softmax, MMA issue, converts.
TILE_LOOP = {"forward": 13.25, "backward_kv": 15.84, "backward_q": 11.47}
MASK_BASE = 1.6         # a PARTIAL tile's bounds check and select (causal's 2.8 less its compare)
BACKWARD_LOGIT = 1.5    # a backward pass recomputes the logit and applies its slope (exp 1.4x, tanh 1.3x, log 1.5x)

# Each IR operation, in thread instructions where it runs per pair (the probes of op_costs.py:
# `% 7` on q - k adds 11.7 with its compare and `and`, tanh 14, exp 7 with its multiply, ...).
_Op, _Func = ir.BinaryOp, ir.Func
# Integer `//` and `%` by a positive constant are a multiply-high and fix-up (9 and 8), by a
# power of two a shift or a mask; by a runtime value, `DIVISION_BY_VALUE`.
OP_COST = {_Op.ADD: 1, _Op.SUB: 1, _Op.MUL: 1, _Op.DIV: 12, _Op.FLOOR_DIV: 9, _Op.MOD: 8, _Op.POW: 20,
           **{op: 1.25 for op in ir.COMPARISONS + ir.LOGIC}}
DIVISION_BY_VALUE = 19  # `% (h + 3)` on q - k adds 22.5 with its compare and `and`
CALL_COST = {_Func.ABS: 1, _Func.MIN: 1, _Func.MAX: 1, _Func.FLOOR: 1, _Func.CEIL: 1, _Func.LOG: 21,
             _Func.LOG2: 20, _Func.EXP: 7, _Func.SQRT: 3, _Func.TANH: 14, _Func.HASH: 8}
LOAD_COST = 4           # an input gathered through the cache
OTHER_COST = 1          # a negation, cast or select


@dataclass(frozen=True)
class Hardware:
    """A GPU's public numbers and the model's efficiency parameters (see attnlang/hardware/)."""

    key: str
    name: str
    sms: int
    bf16_tflops: float
    fp32_tflops: float
    hbm_gb_per_s: float
    l2_mib: float
    smem_kib_per_sm: float
    clock_ghz: float
    efficiency: dict = field(default_factory=dict)
    compute_capability: int | None = None  # e.g. 90; None: a profile that does not say (smem_kib_per_sm then)
    memory_gb: float | None = None  # device memory; None: a profile that does not say


def load_hardware(name_or_path: str) -> Hardware:
    """A profile by name (h100, h200, a100, b200, l40s) or from a TOML or JSON file."""
    path = Path(name_or_path)
    if path.suffix in (".toml", ".json") or path.exists():
        source, text = str(path), _read(path)
    else:
        key = name_or_path.lower().replace(" ", "")
        if key not in HARDWARE:
            from .errors import did_you_mean
            raise AttnlangError(f"unknown hardware '{name_or_path}'{did_you_mean(key, HARDWARE)} "
                                f"(known: {', '.join(HARDWARE)}, or a profile file)")
        source = f"attnlang/hardware/{key}.toml"
        text = resources.files("attnlang").joinpath("hardware", f"{key}.toml").read_text()
    data = _parse(text, source)
    return _validate(data, source, path.stem if path.suffix else name_or_path.lower())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise AttnlangError(f"cannot read hardware profile {path}: {err.strerror or err}") from None


def _parse(text: str, source: str) -> dict:
    import json
    try:
        return json.loads(text) if source.endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise AttnlangError(f"hardware profile {source} is not valid: {err}") from None


def _validate(data: dict, source: str, key: str) -> Hardware:
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        raise AttnlangError(f"hardware profile {source} is missing '{missing[0]}'")
    efficiency = data.get("efficiency", {})
    missing = [f for f in EFFICIENCY if f not in efficiency]
    if missing:
        raise AttnlangError(f"hardware profile {source} is missing efficiency.{missing[0]}")
    for name in REQUIRED[1:]:
        _check_positive(source, name, data[name])
    for name in EFFICIENCY:
        _check_positive(source, f"efficiency.{name}", efficiency[name], allow_zero=name.endswith("_ns"))
    for name in ("mma", "elementwise", "memory"):
        if efficiency[name] > 1:
            raise AttnlangError(f"hardware profile {source}: efficiency.{name} must be at most 1, got {efficiency[name]}")
    capability = data.get("compute_capability")
    if capability is not None and (isinstance(capability, bool) or not isinstance(capability, int) or capability < 70):
        raise AttnlangError(f"hardware profile {source}: compute_capability must be an int such as 80 or 90, "
                            f"got {capability!r}")
    memory = data.get("memory_gb")
    if memory is not None:
        _check_positive(source, "memory_gb", memory)
    return Hardware(key=key, name=str(data["name"]), **{f: data[f] for f in REQUIRED[1:]}, efficiency=dict(efficiency),
                    compute_capability=capability, memory_gb=memory)


def _check_positive(source, name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        raise AttnlangError(f"hardware profile {source}: {name} must be a positive number, got {value!r}")


def ir_cost(expr: ir.Expr, block: tuple[int, int] = (128, 64)) -> float:
    """Thread instructions per pair of a `block` tile to evaluate `expr`. A subexpression used
    twice is computed once; one of `q` alone (of `k` alone) once per row (column), one of
    neither once per program (free)."""
    seen, axes = set(), {}
    total = 0.0
    for node in ir.walk(expr):
        if node in seen:
            continue
        seen.add(node)
        total += _node_cost(node) * _share(_axes(node, axes), block)
    return total


def _node_cost(node: ir.Expr) -> float:
    match node:
        case ir.Binary(op, _, divisor) if op in (_Op.FLOOR_DIV, _Op.MOD):
            return _division_cost(op, divisor, node.type)
        case ir.Binary(op):
            return OP_COST[op]
        case ir.Call(func, args):
            return CALL_COST[func] * (len(args) if func == _Func.HASH else 1)
        case ir.Load():
            return LOAD_COST
        case ir.Unary() | ir.Cast() | ir.Select():
            return OTHER_COST
    return 0.0


def _division_cost(op: ir.BinaryOp, divisor: ir.Expr, result: ir.Type) -> float:
    if result is ir.Type.FLOAT:
        return OP_COST[_Op.DIV] + 1  # floor of a quotient
    if isinstance(divisor, ir.Const) and divisor.value > 0:
        power_of_two = int(divisor.value) & (int(divisor.value) - 1) == 0
        return 0.5 if power_of_two else OP_COST[op]  # a shift or mask, often merged into its use
    return DIVISION_BY_VALUE


def _axes(node: ir.Expr, memo: dict) -> frozenset:
    """Which of a tile's axes (q rows, k columns) a node varies along; `score` varies along both."""
    if node not in memo:
        if isinstance(node, ir.Var):
            memo[node] = frozenset("qk") if node.name == "score" else frozenset({node.name}) & frozenset("qk")
        else:
            memo[node] = frozenset().union(*(_axes(child, memo) for child in ir.children(node)))
    return memo[node]


def _share(axes: frozenset, block: tuple[int, int]) -> float:
    if axes == frozenset("qk"):
        return 1.0
    return 1.0 / block[1] if axes == {"q"} else 1.0 / block[0] if axes == {"k"} else 0.0


@dataclass
class SimResult:
    """A prediction; times in milliseconds, `breakdown` sums to `time_ms`."""

    pattern: str
    hardware: str
    seq: int
    seq_k: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    backward: bool
    block: tuple[int, int]
    time_ms: float
    dense_time_ms: float
    speedup: float
    upper_bound: float
    utilization: float
    tile_density: float
    programs: int
    slots: int
    breakdown: dict

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def schedule_programs(durations: np.ndarray, slots: int, placement: str = "greedy") -> float:
    """Makespan of programs on identical slots: "greedy" in launch order (each program to the
    slot that frees first), "longest-first" (a persistent kernel's order), or "fluid"."""
    durations = np.asarray(durations, dtype=np.float64)
    if placement == "fluid":
        return float(durations.sum() / slots)
    if placement == "longest-first":
        durations = np.sort(durations)[::-1]
    elif placement != "greedy":
        raise AttnlangError(f"placement must be greedy, longest-first or fluid, got {placement!r}")
    if len(durations) <= slots:
        return float(durations.max(initial=0.0))
    free = list(np.sort(durations[:slots]))  # the first wave
    heapq.heapify(free)
    for duration in durations[slots:]:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return float(max(free))


def _bandwidth(hw: Hardware) -> float:
    """Bytes per second one SM can count on: its share of HBM bandwidth × `efficiency.memory`."""
    return hw.hbm_gb_per_s * 1e9 / hw.sms * hw.efficiency["memory"]


class _TileCosts:
    """Seconds per visited tile on one SM, split into MMA, elementwise, memory and overhead;
    `instructions`: the tile loop's warp instructions, all warps together."""

    def __init__(self, hw: Hardware, bm: int, bn: int, dim: int, dtype: str, instructions: float,
                 flops_per_pair_dim: float, loaded_rows: int, compute_only: bool):
        eff = hw.efficiency
        peak = (hw.bf16_tflops if dtype != "fp32" else hw.fp32_tflops) * 1e12 / hw.sms
        self.mma = flops_per_pair_dim * bm * bn * dim / (peak * eff["mma"])
        work = instructions / (ISSUE_PER_CLOCK * hw.clock_ghz * 1e9)  # every warp instruction takes an issue slot
        self.elementwise = 0.0 if compute_only else work / eff["elementwise"]
        load = loaded_rows * dim * DTYPE_BYTES[dtype] / _bandwidth(hw)
        self.memory = 0.0 if compute_only else max(0.0, load - self.mma - self.elementwise)
        self.overhead = 0.0 if compute_only else eff["tile_overhead_ns"] * 1e-9

    @property
    def total(self) -> float:
        return self.mma + self.elementwise + self.memory + self.overhead


# Rows of D values each program moves that no tile loop hides, per kernel, in units of
# (BLOCK_M, BLOCK_N): its own tile's load and the epilogue's stores, and the pipeline's first
# tile of the loop (its wait is exposed; later tiles load behind compute).
PROGRAM_ROWS = {"forward": (2, 2),       # Q in, O out; the first K and V
                "backward_kv": (2, 4),   # the first Q and dO; K, V in, dK, dV out
                "backward_q": (3, 2)}    # Q, dO in, dQ out; the first K and V


def _program_seconds(hw: Hardware, kernel: str, bm: int, bn: int, dim: int, dtype: str) -> float:
    rows_m, rows_n = PROGRAM_ROWS[kernel]
    exposed = (rows_m * bm + rows_n * bn) * dim * DTYPE_BYTES[dtype] / _bandwidth(hw)
    return exposed + hw.efficiency["program_overhead_ns"] * 1e-9


def simulate(pattern_or_blockmap, seq: int | None = None, heads: int = 16, head_dim: int = 128,
             dtype: str = "bf16", batch: int = 1, hardware="h100", backward: bool = False,
             block=(128, 64), seq_k: int | None = None, inputs=None, placement: str = "greedy",
             compute_only: bool = False, partial_as_full: bool = False, costs="model",
             layout="auto", route_schedule: str | None = None) -> SimResult:
    """Predicted time of attnlang's kernel for a pattern (or a block map) on a GPU.

    `costs` prices a tile's non-MMA work: "model" weighs the IR's operations (fast, no
    compiler); "compiled" compiles the launch's kernels for the hardware's architecture (no GPU
    needed; cached on disk) and charges each FULL and PARTIAL tile its SASS instructions per
    tile-loop iteration at ISSUE_PER_CLOCK a clock; or pass a `TileInstructions`.

    `speedup` is against the same kernel on a dense (all-FULL) map; `upper_bound` is
    dense tiles / visited tiles (what a tile-counting simulator would claim). With
    `compute_only` and `partial_as_full`, only tensor-core work is priced and partial tiles
    cost like full ones; with `placement="fluid"` too, speedup equals the upper bound.

    `layout` ("auto" — what `Pattern.compile` does —, "row-major", a tile shape such as "16x8",
    "residues D"; see `Pattern.with_layout`) prices the kernel on reordered tokens plus the permutation's copies
    (`breakdown["permutation"]`); speedup stays against the dense kernel on the original
    lengths. A block map passed in carries its own layout. A routing pattern is priced at its
    routed bound (`attnlang.routing.routed_kinds`) plus its selection stage
    (`breakdown["selection"]`), never as its static candidates. Per-token routing runs the
    schedule `route_schedule` ("gathered": the chosen blocks key-block-major, `breakdown["gathered"]`
    and their partial outputs' merge, `breakdown["merge"]`; "tiles": tile-major; None: what the
    kernel picks, `route_schedule_for`: the faster, but tile-major past a quarter of the device's memory).
    """
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    if dtype not in DTYPE_BYTES:
        raise AttnlangError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    block_map = _block_map(pattern_or_blockmap, seq, seq_k, heads, block, inputs, layout, hw, head_dim, dtype,
                           backward)
    pattern = block_map.pattern
    bm, bn = block_map.block_q, block_map.block_k
    seq, seq_k = block_map.seq_q, block_map.seq_k
    instructions = None  # the compiled counts, once the schedule that runs is known (below)
    model = _ModelInstructions(pattern, bm, bn, partial_as_full)
    slots = hw.sms * int(hw.efficiency["programs_per_sm"])

    def run(kinds: np.ndarray | None, tiles: dict | None = None):
        """Seconds and parts of the launch's passes over a tile map, or over `tiles`: per kernel,
        its programs' FULL and PARTIAL tile counts, (map heads, programs) each, run by the
        gathered kernels (`gathered_forward`, ...: their compiled counts)."""
        total, parts = 0.0, {"mma": 0.0, "elementwise": 0.0, "memory": 0.0, "overhead": 0.0, "imbalance": 0.0}
        for kernel, flops, rows, transposed in _passes(bm, bn, backward):
            if tiles is None:
                pass_kinds = kinds.transpose(0, 2, 1) if transposed else kinds
                n_full = (pass_kinds == FULL).sum(-1).astype(np.float64)
                n_partial = (pass_kinds == PARTIAL).sum(-1).astype(np.float64)
            else:
                n_full, n_partial = tiles[kernel]
            compiled_name = kernel if tiles is None else f"gathered_{kernel}"
            counts = instructions.per_tile(compiled_name) if instructions else (None, None)
            full_count = counts[0] or model.full(kernel)
            partial_count = full_count if partial_as_full else counts[1] or model.partial(kernel)
            full = _TileCosts(hw, bm, bn, head_dim, dtype, full_count, flops, rows, compute_only)
            partial = _TileCosts(hw, bm, bn, head_dim, dtype, partial_count, flops, rows, compute_only)
            program = 0.0 if compute_only else _program_seconds(hw, kernel, bm, bn, head_dim, dtype)
            per_row = n_full * full.total + n_partial * partial.total + program      # (H', rows)
            map_heads = n_full.shape[0]  # this run's map: 1, or one per head
            durations = _launch_order(per_row, batch, heads, map_heads)
            makespan = schedule_programs(durations * hw.efficiency["programs_per_sm"], slots, placement)
            total += makespan
            work = lambda attr: float((n_full * getattr(full, attr) + n_partial * getattr(partial, attr)).sum())  # noqa: E731
            scale = batch * heads / map_heads * hw.efficiency["programs_per_sm"] / slots
            for name in ("mma", "elementwise", "memory"):
                parts[name] += work(name) * scale
            parts["overhead"] += (work("overhead") + program * per_row.size) * scale
            parts["imbalance"] += float(makespan - durations.sum() * hw.efficiency["programs_per_sm"] / slots)
        return total, parts

    kinds, selection, gathered = block_map.kinds, 0.0, None
    if pattern.route is None and route_schedule is not None:
        raise AttnlangError(f"route_schedule applies to routed patterns; {_label(pattern)} does not route")
    if pattern.route is not None:  # routing visits at most its bound, after a selection stage of its own
        from .routing import gathered_tiles, merge_seconds, routed_kinds, selection_seconds
        from .routing import check_schedule
        check_schedule(pattern, route_schedule)
        if pattern.route.query_block == 1 and route_schedule is None:  # what the kernel picks, priced once
            fitting = _fitting_schedules(block_map, batch, heads, head_dim, hw)
            per_schedule = costs
            if costs == "compiled":  # each schedule by its own kernels
                per_schedule = {schedule: _instructions(costs, pattern_or_blockmap, block_map, hw, head_dim, dtype,
                                                        inputs, schedule) for schedule in fitting}
            results = _schedule_results(block_map, fitting, heads, head_dim, dtype, batch, hw, backward,
                                        placement=placement, compute_only=compute_only,
                                        partial_as_full=partial_as_full, costs=per_schedule)
            return min(results.values(), key=lambda result: result.time_ms)
        if route_schedule == "gathered":  # per token: the kept pairs tile-major, the chosen blocks gathered
            kinds, gathered = routed_kinds(block_map, kept_only=True), gathered_tiles(block_map, backward)
        else:
            kinds = routed_kinds(block_map)
        if not compute_only:
            selection = selection_seconds(hw, pattern.route, seq, seq_k, batch, heads, head_dim, dtype)
    instructions = _instructions(costs, pattern_or_blockmap, block_map, hw, head_dim, dtype, inputs, route_schedule)
    time, breakdown = run(kinds)
    breakdown["gathered"] = breakdown["merge"] = 0.0
    if gathered is not None:  # its own line: the parts above are the tile-major half's
        breakdown["gathered"], _ = run(None, gathered)
        time += breakdown["gathered"]
        if not compute_only:
            breakdown["merge"] = merge_seconds(hw, pattern.route, seq, batch, heads, head_dim, backward)
            time += breakdown["merge"]
    breakdown["selection"] = selection
    time += selection
    laid_out = block_map.layout is not None and not block_map.layout.is_row_major
    original = block_map.layout_lengths if laid_out else (seq, seq_k)
    dense = np.full((1, -(-original[0] // bm), -(-original[1] // bn)), FULL, dtype=np.int8)
    dense_time, _ = run(dense)
    breakdown["permutation"] = 0.0
    if laid_out and not compute_only:
        from .layout import permutation_ms
        breakdown["permutation"] = permutation_ms(block_map.layout, hw, *original, batch, heads, head_dim, dtype,
                                                  backward) * 1e-3
        time += breakdown["permutation"]
    if laid_out:
        seq, seq_k = original
    visited = float((kinds != 0).sum()) * heads / kinds.shape[0]
    if gathered is not None:  # the gathered programs' tiles too (the forward's: one visit per tile)
        visited += float(sum(gathered["forward"]).sum()) * heads / gathered["forward"][0].shape[0]
    flops_per_tile = (4.0 + (14.0 if backward else 0.0)) * bm * bn * head_dim
    peak = (hw.bf16_tflops if dtype != "fp32" else hw.fp32_tflops) * 1e12
    return SimResult(
        pattern=_label(pattern), hardware=hw.key, seq=seq, seq_k=seq_k, batch=batch, heads=heads,
        head_dim=head_dim, dtype=dtype, backward=backward, block=(bm, bn), time_ms=time * 1e3,
        dense_time_ms=dense_time * 1e3, speedup=dense_time / time if time else float("inf"),
        upper_bound=dense.size * heads / max(visited, 1.0),
        utilization=visited * batch * flops_per_tile / (time * peak) if time else 0.0,
        tile_density=block_map.tile_density, programs=int(block_map.kinds.shape[1] * batch * heads), slots=slots,
        breakdown={k: v * 1e3 for k, v in breakdown.items()},
    )


def route_schedule_for(block_map, heads: int | None = None, head_dim: int = 128, dtype: str = "bf16",
                       batch: int = 1, hardware="h100", backward: bool = True, **options) -> str:
    """The schedule per-token routing runs at this block map, what `AttentionKernel` picks per
    length: the one `simulate` (with `options`) prices faster, "gathered" (key-block-major) or
    "tiles" (tile-major, the union of a tile's rows' blocks) — but "tiles" where the gathered
    schedule's float32 partial outputs, one per (row, choice) (B·H·N·K·D·4 bytes, and as much
    again for the backward's dQ slots), would take over a quarter of the device's memory."""
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    heads = block_map.heads if heads is None else heads
    fitting = _fitting_schedules(block_map, batch, heads, head_dim, hw)
    results = _schedule_results(block_map, fitting, heads, head_dim, dtype, batch, hw, backward, **options)
    return min(results, key=lambda schedule: results[schedule].time_ms)


def _fitting_schedules(block_map, batch: int, heads: int, head_dim: int, hw: Hardware) -> tuple[str, ...]:
    """The schedules per-token routing may run: the gathered one only where its workspace takes at
    most a quarter of the device's memory."""
    from .routing import gathered_workspace_bytes
    workspace = gathered_workspace_bytes(block_map.pattern.route, block_map.seq_q, batch, heads, head_dim)
    fits = hw.memory_gb is None or workspace <= hw.memory_gb * 1e9 / 4
    return ("gathered", "tiles") if fits else ("tiles",)


def _schedule_results(block_map, schedules, heads, head_dim, dtype, batch, hw, backward, **options) -> dict:
    """`simulate` of each schedule; `costs` as simulate's, or one per schedule (a dict)."""
    costs = options.pop("costs", "model")
    return {schedule: simulate(block_map, heads=heads, head_dim=head_dim, dtype=dtype, batch=batch, hardware=hw,
                               backward=backward, route_schedule=schedule,
                               costs=costs[schedule] if isinstance(costs, dict) else costs, **options)
            for schedule in schedules}


def tile_seconds(pattern: ir.PatternIR, hw: Hardware, block: tuple[int, int], head_dim: int = 128,
                 dtype: str = "bf16", backward: bool = True) -> tuple[float, float]:
    """Seconds one SM spends on a FULL and on a PARTIAL tile, over the forward (and backward)
    kernels, with the op weights: what ranks layouts before their maps are analyzed whole."""
    bm, bn = block
    model = _ModelInstructions(pattern, bm, bn, partial_as_full=False)
    passes = _passes(bm, bn, backward)
    full = sum(_TileCosts(hw, bm, bn, head_dim, dtype, model.full(k), f, rows, False).total
               for k, f, rows, _ in passes)
    partial = sum(_TileCosts(hw, bm, bn, head_dim, dtype, model.partial(k), f, rows, False).total
                  for k, f, rows, _ in passes)
    return full, partial


def _passes(bm: int, bn: int, backward: bool) -> list[tuple[str, float, int, bool]]:
    """The kernels of a launch: (kernel, MMA flops per pair and dim, rows of D loaded per tile,
    whether its programs walk the transposed map). dK/dV: programs per key tile loading Q and
    dO; dQ: per query tile loading K and V."""
    passes = [("forward", 4.0, 2 * bn, False)]
    if backward:
        passes += [("backward_kv", 8.0, 2 * bm, True), ("backward_q", 6.0, 2 * bn, False)]
    return passes


# The routed mask of `_allowed` in the kernel template, counted op by op: per row, ROUTE_TOP
# iterations of load, subtract, two compares, shift, select and or build the row's bitmask of
# the tile's chosen blocks; per pair, the key's block (a division by a constant, per column),
# a shift, an and, a compare, an or with keep and an and with the mask.
ROUTE_ROW_OPS = 7
ROUTE_PAIR_OPS = 5


def routed_mask_cost(route: ir.RouteIR, block: tuple[int, int]) -> float:
    """Thread instructions per pair that a PARTIAL tile of a routed pattern adds to its mask."""
    bm, bn = block
    per_row = ROUTE_ROW_OPS * route.top / bn
    per_column = OP_COST[_Op.FLOOR_DIV] / bm
    return ROUTE_PAIR_OPS + per_row + per_column + ir_cost(route.keep, block)


class _ModelInstructions:
    """Warp instructions of one tile-loop iteration, FULL and PARTIAL, counted from the IR."""

    def __init__(self, pattern: ir.PatternIR, bm: int, bn: int, partial_as_full: bool):
        self.pairs = bm * bn
        self.logit = ir_cost(pattern.logit, (bm, bn))
        self.mask = 0.0 if partial_as_full else MASK_BASE + ir_cost(pattern.mask, (bm, bn))
        if pattern.route is not None and not partial_as_full:
            self.mask += routed_mask_cost(pattern.route, (bm, bn))

    def full(self, kernel: str) -> float:
        logit = self.logit if kernel == "forward" else BACKWARD_LOGIT * self.logit
        return (TILE_LOOP[kernel] + logit) * self.pairs / WARP

    def partial(self, kernel: str) -> float:
        return self.full(kernel) + self.mask * self.pairs / WARP


@dataclass(frozen=True)
class TileInstructions:
    """SASS warp instructions of one tile-loop iteration, FULL and PARTIAL, of each kernel of a
    launch (forward, backward_kv, backward_q), all warps together: what `costs="compiled"`
    charges. From `attnlang.codegen.targets` reports (`from_report`)."""

    target: str
    per_kernel: dict  # kernel -> (full, partial): instructions x warps, None where no loop was found

    @classmethod
    def from_report(cls, report) -> "TileInstructions":
        per_kernel = {}
        for k in report:
            full = k.full_instructions and k.full_instructions * k.num_warps
            partial = k.partial_instructions and k.partial_instructions * k.num_warps
            per_kernel[k.kernel.removeprefix("attention_")] = (full or partial, partial or full)
        return cls(report.target, per_kernel)

    def per_tile(self, kernel: str) -> tuple[float | None, float | None]:
        return self.per_kernel.get(kernel, (None, None))


def compiled_instructions(pattern, hw: Hardware, block: tuple[int, int], head_dim: int, dtype: str, seq: int,
                          inputs=None, seq_k: int | None = None, route_schedule=None) -> TileInstructions:
    """The launch's kernels compiled for `hw`'s architecture (attnlang.codegen.targets, no GPU),
    their instruction counts cached in ~/.cache/attnlang/costs by kernel source and launch;
    per-token routing's at `route_schedule` (the gathered kernels too where it is "gathered")."""
    import hashlib
    import json
    import os

    import torch
    import triton

    from .codegen.targets import resolve_target
    if hw.compute_capability is None:
        raise AttnlangError(f"hardware profile {hw.key} has no compute_capability: costs='compiled' needs the "
                            "architecture to compile for")
    target = resolve_target(f"sm_{hw.compute_capability}")
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    # the row-major kernel: a layout changes only per-row position arithmetic in the tile loop
    kernel = pattern.compile(heads=16, head_dim=head_dim, dtype=torch_dtype, block=block, layout="row-major",
                             route_schedule=route_schedule if pattern.is_routed else None)
    seq_k = seq if seq_k is None else seq_k
    ragged = seq % block[0] != 0 or seq_k % block[1] != 0
    # what the compiled code depends on: the source, the target, the specialization (RAGGED, and
    # Triton's divisibility of the lengths), the inputs' shapes, and Triton itself
    shapes = sorted((name, np.shape(values)) for name, values in (inputs or {}).items())
    key = hashlib.sha256(repr((kernel.source, target.name, head_dim, dtype, ragged, seq % 16 == 0,
                               seq_k % 16 == 0, shapes, route_schedule, triton.__version__)).encode())
    cache = Path(os.environ.get("ATTNLANG_CACHE", Path.home() / ".cache" / "attnlang")) / "costs"
    path = cache / f"{key.hexdigest()[:24]}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return TileInstructions(data["target"], {k: tuple(v) for k, v in data["per_kernel"].items()})
    counts = TileInstructions.from_report(kernel.compile_for(target, seq, seq_k, inputs=inputs))
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # atomic: concurrent simulations share the cache
    temporary.write_text(json.dumps({"target": counts.target, "per_kernel": counts.per_kernel}))
    temporary.replace(path)
    return counts


def _instructions(costs, source, block_map: BlockMap, hw: Hardware, head_dim: int, dtype: str,
                  inputs, route_schedule=None) -> TileInstructions | None:
    if isinstance(costs, TileInstructions):
        return costs
    if costs == "model":
        return None
    if costs != "compiled":
        raise AttnlangError(f"costs must be 'model', 'compiled' or a TileInstructions, got {costs!r}")
    if isinstance(source, BlockMap):
        raise AttnlangError("costs='compiled' compiles the pattern's kernels: pass the Pattern, not a BlockMap")
    # the row-major kernel at the row-major lengths (its inputs' lengths): a layout changes only
    # per-row position arithmetic in the tile loop
    laid_out = block_map.layout is not None and not block_map.layout.is_row_major
    seq_q, seq_k = block_map.layout_lengths if laid_out else (block_map.seq_q, block_map.seq_k)
    return compiled_instructions(source, hw, (block_map.block_q, block_map.block_k), head_dim, dtype,
                                 seq_q, inputs, seq_k, route_schedule)


def _launch_order(per_row: np.ndarray, batch: int, heads: int, map_heads: int) -> np.ndarray:
    """Program durations in launch order: tiles fastest, then heads, then batch."""
    per_head = per_row if map_heads == heads else np.broadcast_to(per_row, (heads, per_row.shape[1]))
    return np.tile(per_head.ravel(), batch)


def _block_map(source, seq, seq_k, heads, block, inputs, layout="row-major", hw=None, head_dim=128,
               dtype="bf16", backward=True) -> BlockMap:
    if isinstance(source, BlockMap):
        return source
    if seq is None:
        raise AttnlangError("simulate needs seq= (the sequence length) for a pattern")
    seq_k = seq if seq_k is None else seq_k
    from .layout import is_spec
    if is_spec(layout, "auto") and source.layout.is_row_major and not source.inputs:
        # chosen for this head dim, dtype and pass, as compile would; its map comes with it
        layout = source.choose_layout("auto", seq, seq_k, block, heads=heads, head_dim=head_dim, dtype=dtype,
                                      hardware=hw or "h100", backward=backward)
    block_map = source.analyze(seq, seq_k, heads, block, inputs, layout=layout, hardware=hw or "h100")
    if block_map.layout is not None and not block_map.layout.is_row_major:
        block_map.layout_lengths = (seq, seq_k)
    return block_map


def _label(pattern: ir.PatternIR) -> str:
    return f"{pattern.name}({', '.join(f'{k}={v!r}' for k, v in pattern.params)})"


BLOCK_CANDIDATES = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (64, 32), (32, 32))

# Tile shapes whose compiled kernels (causal, bf16, at the launcher's warps and stages) keep
# their accumulators in registers, at most 128 bytes of spills per thread in every kernel
# (benchmarks/results/launch_configs.json; tests/test_targets.py compiles what block="auto"
# picks). By architecture family (sm_8x; sm_90 and later) and head dims up to 64 or 128. A shape
# inside a listed one has fewer live values and passes too; wider heads get 64x64 and smaller.
REGISTER_SAFE = {
    (80, 64): ((128, 64), (64, 64), (128, 32)),   # 64x128: dK/dV 288 B; 128x128: dK/dV 556 B
    (80, 128): ((128, 64), (64, 64), (128, 32)),  # 64x128: dK/dV 2.7 KB; 128x128: 3.9 KB, dQ 512 B
    (90, 64): ((128, 128), (128, 64), (64, 128), (64, 64)),
    (90, 128): ((128, 64), (64, 64), (128, 32)),  # 64x128: dK/dV 1.4 KB; 128x128: 3.2 KB
}


def register_safe(hw: Hardware, block: tuple[int, int], head_dim: int) -> bool:
    family = 90 if (hw.compute_capability or 90) >= 90 else 80
    shapes = REGISTER_SAFE.get((family, 64 if head_dim <= 64 else 128), ((64, 64),)) \
        if head_dim <= 128 else ((64, 64),)
    return any(block[0] <= bm and block[1] <= bn for bm, bn in shapes)


def fits(hw: Hardware, block: tuple[int, int], head_dim: int, dtype: str, inputs: int = 0) -> bool:
    """Whether the launcher's configuration of every kernel fits the architecture's shared memory
    (the template's model, checked against compiled metadata) and keeps its registers; `inputs`:
    how many runtime inputs the pattern declares."""
    from .codegen.kernel_template import KERNELS, SHARED_LIMITS, launch_for, shared_bytes
    capability = hw.compute_capability
    limit = SHARED_LIMITS.get(capability, int(hw.smem_kib_per_sm * 1024) - 1024)
    launch = launch_for(*block, head_dim, capability, DTYPE_BYTES[dtype], inputs)
    smem = all(shared_bytes(kernel, *block, head_dim, DTYPE_BYTES[dtype], launch[kernel]["num_stages"],
                            capability or 90, inputs) <= limit for kernel in KERNELS)
    return smem and register_safe(hw, block, head_dim)


@dataclass
class BlockChoice:
    """The tile shape `block="auto"` picked, and the simulated times that decided it."""

    block: tuple[int, int]
    hardware: str
    seq: int
    times_ms: dict  # candidate -> simulated ms (None: does not fit in shared memory)

    @property
    def reason(self) -> str:
        ranked = sorted((t, b) for b, t in self.times_ms.items() if t is not None)
        others = ", ".join(f"{b[0]}x{b[1]} {t:.3f} ms" for t, b in ranked[1:4])
        skipped = [f"{b[0]}x{b[1]}" for b, t in self.times_ms.items() if t is None]
        text = (f"block {self.block[0]}x{self.block[1]}: {ranked[0][0]:.3f} ms simulated at N={self.seq} on "
                f"{self.hardware} (next: {others})")
        return text + (f"; {', '.join(skipped)} do not fit (shared memory or registers)" if skipped else "")


def choose_block(pattern, seq: int = 16384, heads: int = 16, head_dim: int = 128, dtype: str = "bf16",
                 hardware="h100", inputs=None, candidates=BLOCK_CANDIDATES, costs="model",
                 layout="row-major") -> BlockChoice:
    """The tile shape with the lowest simulated forward + backward time at this length, among
    those whose kernels fit (`fits`); `costs` as in `simulate`. With `layout="auto"` each
    shape is priced in its best layout, so the (layout, tile) pair is chosen together."""
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    times = {}
    for block in candidates:
        if not fits(hw, block, head_dim, dtype, len(pattern.inputs)):
            times[block] = None
            continue
        times[block] = simulate(pattern, seq=seq, heads=heads, head_dim=head_dim, dtype=dtype, hardware=hw,
                                backward=True, block=block, inputs=inputs, costs=costs, layout=layout).time_ms
    feasible = {b: t for b, t in times.items() if t is not None}
    if not feasible:
        raise AttnlangError(f"no tile shape fits {hw.name}'s shared memory and registers at head_dim {head_dim}")
    return BlockChoice(min(feasible, key=feasible.get), hw.key, seq, times)
