"""Generated Triton kernels under the interpreter (CPU, fp32) against the reference.

Forward output and LSE, and the gradients of q, k and v, for every static stdlib pattern,
grouped-query attention, ragged lengths, seq_q != seq_k, fully masked rows, runtime inputs
and hypothesis-drawn patterns. Tolerances: float32 kernel vs float64 reference.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import attnlang
from attnlang.printer import print_pattern

from .flex_mods import MODS, ROUTED
from .strategies import typed_exprs, wrap_mask

STATIC = sorted(name for name in MODS if name not in ROUTED)
TOLERANCE = dict(rtol=2e-4, atol=2e-5)


def doc_ids(length, seed=0):
    return np.sort(np.random.default_rng(seed).integers(0, 4, size=length))


def check_against_reference(pattern, seq_q, seq_k, heads=2, heads_kv=None, dim=16, batch=1, inputs=None,
                            block=16, seed=0):
    heads_kv = heads_kv or heads
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, dim, generator=gen, requires_grad=True)
    k = torch.randn(batch, heads_kv, seq_k, dim, generator=gen, requires_grad=True)
    v = torch.randn(batch, heads_kv, seq_k, dim, generator=gen, requires_grad=True)
    kernel = pattern.compile(block=block)  # heads, groups and head dim from the tensors
    out, lse = kernel(q, k, v, inputs=inputs, return_lse=True)
    grad_out = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * grad_out).sum(), (q, k, v))
    ref_out, ref_lse = pattern.reference_attention(q.double(), k.double(), v.double(), inputs=inputs,
                                                   return_lse=True)
    ref_grads = torch.autograd.grad((ref_out * grad_out.double()).sum(), (q, k, v), allow_unused=True)
    ref_grads = [torch.zeros_like(t) if g is None else g for g, t in zip(ref_grads, (q, k, v))]  # a constant logit
    torch.testing.assert_close(out.double(), ref_out, **TOLERANCE, msg=lambda m: f"output: {m}")
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "LSE -inf exactly on fully masked rows"
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], **TOLERANCE, msg=lambda m: f"lse: {m}")
    for name, got, expected in zip("qkv", grads, ref_grads):
        assert torch.isfinite(got).all(), f"d{name} has NaN/inf"
        torch.testing.assert_close(got.double(), expected.double(), **TOLERANCE, msg=lambda m: f"d{name}: {m}")


@pytest.fixture(scope="module")
def lib():
    return attnlang.stdlib()


@pytest.mark.parametrize("name", STATIC)
def test_stdlib_kernels_match_the_reference(lib, name):
    pattern = lib[name].bind(**MODS[name][0])
    inputs = {"doc": doc_ids(70)} if pattern.inputs else None
    check_against_reference(pattern, 70, 53, inputs=inputs)


@pytest.mark.parametrize("name, seq_q, seq_k, block", [
    ("causal", 64, 48, 16), ("sliding_window", 64, 64, 32), ("alibi", 32, 64, (16, 32)), ("softcap", 48, 48, 16),
])
def test_lengths_of_whole_tiles_launch_without_bounds_checks(lib, name, seq_q, seq_k, block):
    from attnlang.codegen.kernel_template import launch_meta
    pattern = lib[name].bind(**MODS[name][0])
    bm, bn = (block, block) if isinstance(block, int) else block
    tables = {"map_heads": 1, "map_batch": 1}
    assert launch_meta(tables, 2, 2, 16, torch.float32, bm, bn, seq_q, seq_k)["RAGGED"] is False
    assert launch_meta(tables, 2, 2, 16, torch.float32, bm, bn, seq_q + 1, seq_k)["RAGGED"] is True
    check_against_reference(pattern, seq_q, seq_k, block=block)
    check_against_reference(pattern, seq_q - 3, seq_k, block=block)  # the ragged variant of the same kernel


def test_grouped_query_attention(lib):
    check_against_reference(lib["duo"].bind(retrieval_heads=1, window=9, sinks=2), 50, 50, heads=4, heads_kv=2)


def test_fully_masked_rows_give_zero_and_minus_infinity(lib):
    pattern = lib["cross_causal"]  # 60 queries, 35 keys: the first 25 queries see nothing
    kernel = pattern.compile(heads=1, head_dim=16, block=16)
    q, k, v = torch.randn(1, 1, 60, 16), torch.randn(1, 1, 35, 16), torch.randn(1, 1, 35, 16)
    out, lse = kernel(q, k, v, return_lse=True)
    assert (out[0, 0, :25] == 0).all() and torch.isneginf(lse[0, 0, :25]).all()
    check_against_reference(pattern, 60, 35, heads=1)


def test_head_dims_and_batches(lib):
    check_against_reference(lib["softcap"].bind(cap=3.0), 33, 47, heads=1, dim=24, batch=2, block=32)


def test_per_batch_documents(lib):
    docs = np.stack([doc_ids(48, 1), doc_ids(48, 2)])
    check_against_reference(lib["document"], 48, 48, batch=2, inputs={"doc": docs})


def test_lse_gradient_flows(lib):
    pattern = lib["sliding_window"].bind(window=7)
    kernel = pattern.compile(heads=1, head_dim=16, block=16)
    q, k, v = (torch.randn(1, 1, 40, 16, requires_grad=True) for _ in range(3))
    out, lse = kernel(q, k, v, return_lse=True)
    grads = torch.autograd.grad(lse.sum() + out.sum(), (q, k))
    ref_out, ref_lse = pattern.reference_attention(q.double(), k.double(), v.double(), return_lse=True)
    ref = torch.autograd.grad(ref_lse.sum() + ref_out.sum(), (q, k))
    for got, expected in zip(grads, ref):
        torch.testing.assert_close(got.double(), expected.double(), **TOLERANCE)


def test_backward_is_deterministic(lib):
    kernel = lib["strided"].bind(stride=5).compile(heads=2, head_dim=16, block=16)
    q, k, v = (torch.randn(1, 2, 45, 16, requires_grad=True) for _ in range(3))
    first = torch.autograd.grad(kernel(q, k, v).square().sum(), (q, k, v))
    second = torch.autograd.grad(kernel(q, k, v).square().sum(), (q, k, v))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@settings(max_examples=12, deadline=None)
@given(expr=typed_exprs("bool", depth=3), seq_q=st.integers(1, 40), seq_k=st.integers(1, 40),
       heads=st.integers(1, 2), w=st.integers(-5, 20), seed=st.integers(0, 50))
def test_random_patterns_match_the_reference(expr, seq_q, seq_k, heads, w, seed):
    try:
        pattern = attnlang.parse(print_pattern(wrap_mask(expr)), "t.attn")["t"].bind(w=w)
        inputs = {"doc": np.random.default_rng(seed).integers(-2, 3, size=max(seq_q, seq_k))}
        pattern.reference_mask(seq_q, seq_k, heads, inputs)
    except attnlang.AttnlangError:
        assume(False)
    check_against_reference(pattern, seq_q, seq_k, heads=heads, inputs=inputs, seed=seed)


def test_kernel_source_is_readable_and_names_the_pattern(lib):
    source = lib["softcap"].compile(heads=1, head_dim=16).source
    assert source.startswith("# Triton kernels generated by attnlang for pattern softcap(cap=30.0).")
    assert "    # from patterns/softcap.attn:" in source
    assert "def _mask(" in source and "def _dlogit(" in source


def test_compiled_kernels_are_cached(lib):
    pattern = lib["causal"]
    assert pattern.compile(heads=2, head_dim=16) is pattern.compile(heads=2, head_dim=16)


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": 3, "head_dim": 16, "heads_kv": 2}, "heads_kv \\(2\\) must divide heads \\(3\\)"),
    ({"heads": 2, "head_dim": 512}, "head_dim must be at most 256"),
    ({"heads": 2, "head_dim": 16, "block": 24}, "block must be a power of two"),
    ({"heads": 2, "head_dim": 16, "dtype": torch.int32}, "dtype must be one of"),
    ({"heads": 0}, "heads must be a positive int"),
])
def test_compile_arguments_are_checked(lib, kwargs, message):
    with pytest.raises(attnlang.AttnlangError, match=message):
        lib["causal"].compile(**kwargs)


def test_call_arguments_are_checked(lib):
    kernel = lib["causal"].compile(heads=2, head_dim=16)
    with pytest.raises(attnlang.AttnlangError, match="compiled with heads=2, but the tensors have 3"):
        kernel(torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16))
    with pytest.raises(attnlang.AttnlangError, match="q, k and v must have one dtype"):
        kernel(torch.randn(1, 2, 8, 16), *(torch.randn(1, 2, 8, 16, dtype=torch.float16) for _ in range(2)))
    free = lib["causal"].compile()
    with pytest.raises(attnlang.AttnlangError, match="k and v have 3 heads, which must divide q's 4"):
        free(torch.randn(1, 4, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16))
    with pytest.raises(attnlang.AttnlangError, match="needs input 'doc'"):
        lib["document"].compile()(*(torch.randn(1, 1, 8, 16) for _ in range(3)))


def test_one_kernel_serves_heads_groups_dims_and_dtypes(lib):
    """Shapes and dtypes come from the tensors; the kernel caches one specialization each."""
    pattern = lib["sliding_window"].bind(window=9)
    kernel = pattern.compile(block=16)
    for heads, heads_kv, dim in ((2, 2, 16), (4, 2, 24), (3, 1, 8), (2, 1, 32)):
        assert pattern.compile(block=16) is kernel
        check_against_reference(pattern, 40, 33, heads=heads, heads_kv=heads_kv, dim=dim)
    q, k, v = (torch.randn(1, 2, 33, 16, dtype=torch.float16) for _ in range(3))
    half = kernel(q, k, v)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), pattern.reference_attention(q.double(), k.double(), v.double()),
                               rtol=2e-2, atol=2e-3)


def test_compile_writes_a_standalone_module(tmp_path):
    import importlib.util
    from attnlang.cli import main
    path = tmp_path / "kernel.py"
    assert main(["compile", "patterns/softcap.attn", "softcap", "-D", "cap=4.0", "--block", "16",
                 "-o", str(path)]) == 0
    source = path.read_text()
    assert "import attnlang" not in source and "from attnlang" not in source and "codegen" not in source
    spec = importlib.util.spec_from_file_location("standalone_softcap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    q, k, v = (torch.randn(2, 2, 37, 16, requires_grad=True) for _ in range(3))
    out = module.attention(q, k, v)
    pattern = attnlang.stdlib()["softcap"].bind(cap=4.0)
    expected = pattern.reference_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), expected, **TOLERANCE)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.autograd.grad(expected.sum(), (q, k, v))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got.double(), want.double(), **TOLERANCE)


def test_standalone_module_fills_its_tables_on_the_device(tmp_path):
    """The device-side tile classifier agrees with the analysis (tiles cut by a ragged end partial)."""
    import importlib.util
    from attnlang.codegen.template import standalone_source
    pattern = attnlang.stdlib()["duo"].bind(retrieval_heads=1, window=9, sinks=2)
    path = tmp_path / "duo.py"
    path.write_text(standalone_source(pattern.ir, (16, 16)))
    spec = importlib.util.spec_from_file_location("standalone_duo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tables = module.block_tables(70, 53, 3, {}, torch.device("cpu"), 16, 16)
    block_map = pattern.analyze(70, 53, heads=3, block=16)
    for direction in ("forward", "backward"):
        for kind in (0, 1):  # FULL runs, PARTIAL indices
            counts, entries = tables[direction][kind]
            expected_counts, expected_entries = block_map.kernel_tables[direction][kind]
            assert (counts[0].numpy() == expected_counts).all(), (direction, kind)
            for h, row in np.ndindex(*expected_counts.shape):
                n = int(expected_counts[h, row])
                assert entries[0, h, row, :n].tolist() == expected_entries[h, row, :n].tolist(), (direction, kind)


def test_cpu_tensors_without_the_interpreter_get_a_clear_error():
    import os
    import subprocess
    import sys
    script = ("import triton, torch, attnlang\n"
              "k = attnlang.stdlib()['causal'].compile(heads=1, head_dim=16, block=16)\n"
              "q = torch.randn(1, 1, 16, 16)\n"
              "try:\n    k(q, q, q)\nexcept attnlang.AttnlangError as err:\n    print(err)\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "set TRITON_INTERPRET=1 in the environment" in result.stdout, result.stderr[-2000:]
