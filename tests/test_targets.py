"""Kernels compiled for GPU targets without a GPU (attnlang.codegen.targets): every kernel a launch runs,
specialized as Triton's launcher would and compiled by Triton for sm_80 and sm_90, must fit.

The tests run under the interpreter (TRITON_INTERPRET=1); compilation happens in a subprocess
with the compiler on. Cases are in bf16 at the block `Pattern.compile(block="auto")` picks for
A100 (sm_80) and H100 (sm_90). The CI profile (7 launches: about 4.5 CPU-minutes with a cold
Triton cache, so 2.5 minutes on 2 cores; a third of that warm) takes causal at both targets and
head dims, and one case each of a runtime input, a score transform and a 2-D mask; the whole
matrix (every static stdlib pattern x sm_80, sm_90 x d = 64, 128: about 30 minutes on 2 cores)
runs with

    ATTNLANG_GPU_AUDIT=full python -m pytest tests/test_targets.py     # or
    python benchmarks/gpu_audit.py                                    # JSON in benchmarks/results/
"""

import json
import os
from pathlib import Path

import pytest

from attnlang.cli import main
from attnlang.errors import AttnlangError
from attnlang.codegen import sass
from attnlang.codegen.targets import TARGETS, TargetReport, audit_cases, marker_lines, resolve_target, unavailable

from .flex_mods import MODS, ROUTED

STATIC = sorted(name for name in MODS if name not in ROUTED)
AUDIT_TARGETS, HEAD_DIMS = ("sm_80", "sm_90"), (64, 128)
FULL = [(name, target, d) for name in STATIC for target in AUDIT_TARGETS for d in HEAD_DIMS]
CI = [("causal", target, d) for target in AUDIT_TARGETS for d in HEAD_DIMS] + [
    ("document", "sm_90", 128), ("softcap", "sm_80", 128), ("neighborhood2d", "sm_90", 64)]
CASES = FULL if os.environ.get("ATTNLANG_GPU_AUDIT") == "full" else CI
KERNELS = ["attention_forward", "attention_backward_kv", "attention_backward_q"]

needs_toolchain = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture(scope="module")
def reports():
    """Every case compiled once, the cases in parallel processes."""
    return dict(zip(CASES, audit_cases(CASES), strict=True))


# -- the audit ------------------------------------------------------------------------------

@needs_toolchain
@pytest.mark.parametrize("name, target, head_dim", CASES)
def test_every_kernel_of_a_launch_fits_the_target(reports, name, target, head_dim):
    report = reports[name, target, head_dim]
    assert isinstance(report, TargetReport), str(report)  # else the case failed to compile
    assert [k.kernel for k in report] == KERNELS
    too_big = [f"{k.kernel} {k.block[0]}x{k.block[1]}: {k.shared_bytes:,} B shared > {k.shared_limit:,} B "
               f"({k.registers} registers, {k.spills:,} B spilled)" for k in report if not k.fits]
    assert not too_big, f"{name} on {target}, d={head_dim}:\n" + "\n".join(too_big)
    spilling = [f"{k.kernel} {k.block[0]}x{k.block[1]}: {k.spills:,} B spilled" for k in report if k.spills > 128]
    assert not spilling, f"{name} on {target}, d={head_dim}: block='auto' picked a shape that spills\n" + \
        "\n".join(spilling)


@needs_toolchain
@pytest.mark.parametrize("name, target, head_dim", CASES)
def test_the_shared_memory_model_is_never_below_the_compiled_kernels(reports, name, target, head_dim):
    from attnlang.codegen.kernel_template import launch_for, shared_bytes
    import attnlang
    report = reports[name, target, head_dim]
    capability, inputs = TARGETS[target].capability, len(attnlang.stdlib()[name].inputs)
    for k in report:
        kernel = k.kernel.removeprefix("attention_")
        assert launch_for(*k.block, head_dim, capability, 2, inputs)[kernel] == {"num_warps": k.num_warps,
                                                                               "num_stages": k.num_stages}
        model = shared_bytes(kernel, *k.block, head_dim, 2, k.num_stages, capability, inputs)
        assert k.shared_bytes <= model <= 1.7 * k.shared_bytes, (k.kernel, k.shared_bytes, model)


@needs_toolchain
def test_a_report_describes_the_compiled_kernels(reports):
    report = reports["causal", "sm_90", 64]
    forward = report["attention_forward"]
    assert forward.specialization["HEAD_DIM"] == "= 64" and forward.specialization["Q"] == "*bf16:16"
    assert forward.full_instructions and forward.partial_instructions  # causal has both kinds of tile
    for kernel in report:
        assert 0 < kernel.registers <= 255 and kernel.num_warps >= 1 and kernel.num_stages >= 1
        assert kernel.shared_limit == TARGETS["sm_90"].shared_limit and kernel.loops
        assert kernel.compiled.asm["cubin"][:4] == b"\x7fELF"
        assert ".target sm_90a" in kernel.compiled.asm["ptx"]
        assert kernel.compiled.metadata.shared == kernel.shared_bytes
        assert all(Path(path).exists() for path in kernel.files.values())
        assert kernel.per_thousand("full") == pytest.approx(
            kernel.full_instructions * kernel.num_warps * 1000 / (kernel.block[0] * kernel.block[1]))
    assert "attention_backward_kv" in str(report) and "shared" in str(forward)
    assert json.loads(report.to_json())["kernels"][0]["kernel"] == "attention_forward"


@needs_toolchain
def test_compile_report_of_a_laid_out_pattern_runs_at_the_layouts_lengths(capsys):
    code = main(["compile", "neighborhood2d.attn", "neighborhood2d", "-D", "height=6", "-D", "width=10", "-D",
                 "kernel=3", "--layout", "4x4", "--block", "16", "--seq", "60", "--report", "--json", "--target",
                 "sm_90", "--head-dim", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "96 x 96 tokens in layout 4x4's order" in err  # the 6 x 10 grid padded to 8 x 12
    assert {tuple(k["grid"]) for k in json.loads(out)["kernels"]} == {(6, 16)}  # 96 positions, 16 a tile


@needs_toolchain
def test_compile_report_on_the_command_line(reports, capsys):
    code = main(["compile", "causal.attn", "causal", "--report", "--json", "--target", "sm_90", "--head-dim",
                 "64", "--block", "auto", "--hw", "h100", "--seq", "16384"])
    out, err = capsys.readouterr()
    assert code == 0
    printed = json.loads(out)  # the block choice went to stderr
    assert printed["target"] == "sm_90" and "block" in err
    assert [k["shared_bytes"] for k in printed["kernels"]] == [
        k.shared_bytes for k in reports["causal", "sm_90", 64]]


@pytest.mark.parametrize("argv, message", [
    (["compile", "causal.attn", "causal"], "compile needs -o kernel.py, or --report"),
    (["compile", "causal.attn", "causal", "--report", "--target", "sm_70"], "unknown target 'sm_70'"),
    (["compile", "document.attn", "document", "--report"], "needs input 'doc'"),
])
def test_compile_report_errors_exit_2_without_a_traceback(capsys, argv, message):
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2 and message in err and "Traceback" not in err


def test_targets_are_named_as_cuda_names_them():
    assert resolve_target("sm_90") is resolve_target("90") is resolve_target("sm90a") is TARGETS["sm_90"]
    assert TARGETS["sm_80"].shared_limit == 166912 and TARGETS["sm_90"].shared_limit == 232448
    with pytest.raises(AttnlangError, match="expected one of sm_80"):
        resolve_target("hopper")


# -- finding and counting tile loops ----------------------------------------------------------

LISTING = """
        //## File "k.py", line 10
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        //## File "k.py", line 20 inlined at "k.py", line 40
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0030*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0040*/              @!P0 BRA `(.L_x_0) ;
.L_x_1:
        //## File "k.py", line 20 inlined at "k.py", line 41
        /*0050*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        //## File "k.py", line 5 inlined at "k.py", line 21
        //## File "k.py", line 21 inlined at "k.py", line 41
        /*0060*/                   ISETP.GE.AND P1, PT, R5, R6, PT ;
        /*0070*/                   FSEL R4, R4, -INF , P1 ;
        /*0080*/               @P0 BRA `(.L_x_1) ;
.L_x_2:
        //## File "k.py", line 50
        /*0090*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*00a0*/               @P2 BRA `(.L_x_3) ;
        //## File "k.py", line 20 inlined at "k.py", line 60
        /*00b0*/                   FADD R4, R4, R5 ;
        /*00c0*/                   BRA `(.L_x_4) ;
.L_x_3:
        //## File "k.py", line 20 inlined at "k.py", line 61
        /*00d0*/                   FMUL R4, R4, R5 ;
        /*00e0*/                   FMUL R4, R4, R5 ;
        /*00f0*/                   FMUL R4, R4, R5 ;
.L_x_4:
        //## File "k.py", line 50
        /*0100*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P3, [R0], R1 ;
        /*0110*/              @!P3 BRA `(.L_x_6) ;
.L_x_5:
        /*0120*/               @P1 BRA `(.L_x_2) ;
        /*0130*/                   EXIT ;
.L_x_6:
        /*0140*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P3, [R0], R1 ;
        /*0150*/              @!P3 BRA `(.L_x_6) ;
        /*0160*/                   BRA `(.L_x_5) ;
"""


def test_tile_loops_are_counted_per_path_and_told_apart_by_their_source_lines():
    partial = {("k.py", 5), ("k.py", 41), ("k.py", 61)}
    full = {("k.py", 40), ("k.py", 60)}
    loops = sass.tile_loops(LISTING, partial, full)
    assert [(loop.start, loop.end) for loop in loops] == [(0x10, 0x40), (0x50, 0x80), (0x90, 0x160)]
    assert loops[0].paths == [("full", 4)] and loops[1].paths == [("partial", 4)]
    # the diamond: 2 + 2 + 2 + 1 (full) or + 3 (partial); a barrier's retry stub adds 3, counted once
    assert sorted(loops[2].paths) == [("full", 7), ("full", 10), ("partial", 8), ("partial", 11)]
    assert (loops[2].count("full"), loops[2].count("partial")) == (7, 8)


def test_marker_lines_follow_the_partial_flag_of_the_template():
    source = '''import triton

@triton.jit
def _mask(q, k):
    return q >= k

@triton.jit
def _tiles(acc, PARTIAL: tl.constexpr):
    if PARTIAL:
        acc = acc + _mask(1, 2)
    else:
        acc = acc + 1
    return acc

@triton.jit
def kernel(acc):
    acc = _tiles(acc, False)
    acc = _tiles(acc,
                 PARTIAL=True)
'''
    partial, full = marker_lines(source, "m.py")
    assert sorted(line for _, line in partial) == [4, 5, 10, 18, 19]
    assert sorted(line for _, line in full) == [12, 17]


def test_line_info_of_a_cached_identical_kernel_counts_as_this_module():
    from attnlang.codegen.targets import _own_file_names
    old, other, new = "/c/kernels/causal_0123456789abcdef.py", "/d/kernels/causal_00000000ffffffff.py", \
        "/c/kernels/causal_fedcba9876543210.py"
    listing = (f'/*0040*/ HMMA ; // ## File "{old}", line 264 inlined at "{other}", line 57\n'
               '/*0050*/ EXIT ; // ## File "/t/triton/standard.py", line 9')
    mapped = _own_file_names(listing, new)
    assert mapped.count(new) == 2 and old not in mapped and other not in mapped
    assert "/t/triton/standard.py" in mapped


@needs_toolchain
def test_the_simulator_prices_tiles_with_the_compiled_instruction_counts(tmp_path, monkeypatch):
    import attnlang
    from attnlang.simulator import compiled_instructions, load_hardware, simulate
    monkeypatch.setenv("ATTNLANG_CACHE", str(tmp_path))
    pattern, hw = attnlang.stdlib()["causal"], load_hardware("h100")
    counts = compiled_instructions(pattern, hw, (64, 64), 64, "bf16", 4096)
    full, partial = counts.per_tile("forward")
    assert counts.target == "sm_90" and 0 < full < partial  # causal's diagonal tiles evaluate the mask
    assert compiled_instructions(pattern, hw, (64, 64), 64, "bf16", 4096) == counts  # from the cache
    assert len(list(tmp_path.glob("costs/*.json"))) == 1
    ragged = compiled_instructions(pattern, hw, (64, 64), 64, "bf16", 4096, seq_k=4000)  # RAGGED: bounds checks
    assert ragged.per_tile("forward")[1] > partial and len(list(tmp_path.glob("costs/*.json"))) == 2
    compiled = simulate(pattern, seq=4096, head_dim=64, block=(64, 64), costs="compiled", backward=True)
    assert compiled.breakdown["elementwise"] > 0 and compiled.time_ms > 0


@needs_toolchain
def test_a_routed_launch_compiles_its_selection_stage_for_the_gpu():
    # the interpreter accepts what the GPU compiler refuses (a non-constexpr global in a kernel): compile it
    import torch

    import attnlang
    kernel = attnlang.stdlib()["moba"].compile(block=64, route_schedule="gathered")
    report = kernel.compile_for("sm_90", 2048, heads=4, head_dim=64, dtype=torch.bfloat16)
    names = [k.kernel for k in report.kernels]
    assert names[:2] == ["route_pool", "route_select"] and "attention_forward" in names
    assert {"gathered_forward", "gathered_backward_kv", "gathered_backward_q"} <= set(names)  # per-token routing
    assert all(k.fits for k in report.kernels)
    assert all(k.spill_stores == 0 for k in report.kernels if k.kernel.startswith(("gathered", "route")))
    # block routing's selection compiles too (a name typed two ways in one function once stopped it)
    blocks = attnlang.parse("""pattern r() {
    mask q >= k
    route topk(3, block = 256, qpool = max, keep = q // 256 == k // 256)
}""")["r"].compile(block=64)
    report = blocks.compile_for("sm_90", 2048, heads=4, head_dim=64, dtype=torch.bfloat16)
    assert "route_select" in [k.kernel for k in report.kernels] and all(k.fits for k in report.kernels)
