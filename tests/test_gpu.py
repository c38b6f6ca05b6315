"""The kernel suite in bf16 and fp16 on a CUDA GPU, against the float64 reference.

Run on a GPU machine with the interpreter off: TRITON_INTERPRET=0 python -m pytest tests/test_gpu.py
Tolerances follow FlexAttention's tests: the kernel's error may exceed that of the same-dtype
reference by a small factor.
"""

import os

import numpy as np
import pytest
import torch

import attnlang

from .flex_mods import MODS, ROUTED

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
pytestmark = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and TRITON_INTERPRET=0")

STATIC = sorted(name for name in MODS if name not in ROUTED)


def max_error(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", STATIC)
def test_kernel_error_is_within_a_factor_of_the_same_dtype_reference(name, dtype):
    pattern = attnlang.stdlib()[name].bind(**MODS[name][0])
    n, heads, dim = 1000, 4, 64
    inputs = {"doc": np.sort(np.random.default_rng(0).integers(0, 5, n))} if pattern.inputs else None
    q, k, v = (torch.randn(2, heads, n, dim, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    kernel = pattern.compile(heads=heads, head_dim=dim, dtype=dtype, block=(64, 64))
    out = kernel(q, k, v, inputs=inputs)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    exact = pattern.reference_attention(q.double(), k.double(), v.double(), inputs=inputs)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad.double())
    same_dtype = pattern.reference_attention(q, k, v, inputs=inputs)  # float32 accumulation, dtype output
    same_grads = torch.autograd.grad(same_dtype, (q, k, v), grad)
    assert max_error(out, exact) <= 3 * max_error(same_dtype, exact) + 1e-3
    for got, want, ref in zip(grads, exact_grads, same_grads):
        assert torch.isfinite(got).all()
        assert max_error(got, want) <= 5 * max_error(ref, want) + 1e-2


# name: (parameters, tokens); grid patterns at their grid's size
ROUTED_SMALL = {"moba": ({"block": 128, "top": 2}, 1000), "quest": ({"page": 16, "top": 8}, 1000),
                "nsa_selected": ({"block": 64, "top": 4}, 1000),
                "biformer": ({"height": 32, "width": 32, "region": 8, "top": 3}, 1024),
                "vmoba": ({"frames": 4, "height": 16, "width": 16, "ct": 2, "cy": 4, "cx": 4, "threshold": 0.5,
                           "top": 4}, 1024)}


# every routed pattern on both schedules it can take: the gathered one is per-token routing's
SCHEDULES = [(name, schedule) for name in ROUTED for schedule in (None, "gathered", "tiles")
             if schedule != "gathered" or attnlang.stdlib()[name].ir.route.query_block == 1]


@pytest.mark.parametrize("name, schedule", SCHEDULES)
def test_a_routed_kernel_attends_to_its_own_selection_in_bf16(name, schedule):
    params, n = ROUTED_SMALL[name]
    pattern = attnlang.stdlib()[name].bind(**params)
    heads, dim = 4, 64
    q, k, v = (torch.randn(2, heads if i == 0 else 2, n, dim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for i in range(3))
    kernel = pattern.compile(block=(64, 64), route_schedule=schedule)
    selection = kernel.selection(q, k)
    out = kernel(q, k, v)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    exact = pattern.reference_attention(q.double(), k.double(), v.double(), selection=selection)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad.double())
    same_dtype = pattern.reference_attention(q, k, v, selection=selection)
    same_grads = torch.autograd.grad(same_dtype, (q, k, v), grad)
    assert max_error(out, exact) <= 3 * max_error(same_dtype, exact) + 1e-3
    for got, want, ref in zip(grads, exact_grads, same_grads):
        assert torch.isfinite(got).all()
        assert max_error(got, want) <= 5 * max_error(ref, want) + 1e-2
