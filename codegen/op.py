"""The kernels as torch custom ops, so `torch.compile(model, fullgraph=True)` traces through.

`attnlang::attention(q, k, v, inputs, kernel, scale) -> (out, lse)` and its backward
`attnlang::attention_backward(...) -> (dq, dk, dv)` are opaque to the compiler: each has a
fake (meta) implementation for tracing, and autograd is registered, so a model that calls a
kernel compiles to one graph, forward and backward. Everything host-side — checking the
inputs, the analysis, the block tables for a length (cached per lengths and inputs) — runs
inside the op, at run time, never under tracing; a new sequence length only builds tables,
it recompiles nothing. `kernel` names an `AttentionKernel` in this process's registry (a
custom op takes only tensors and plain values).
"""

from __future__ import annotations

import torch

__all__ = ["attention_op", "register"]

_REGISTRY: dict[str, object] = {}


def register(kernel) -> str:
    """The key under which the ops find `kernel` (stable for the kernel's lifetime)."""
    key = f"{kernel.pattern.slug}#{id(kernel):x}"
    _REGISTRY[key] = kernel
    return key


@torch.library.custom_op("attnlang::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: list[torch.Tensor], kernel: str,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _REGISTRY[kernel].run_forward(q, k, v, inputs, scale)
    return out, lse


@attention_op.register_fake
def _attention_fake(q, k, v, inputs, kernel, scale):
    # contiguous, as the kernels write them whatever the strides of q
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attnlang::attention_backward", mutates_args=())
def attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                          dout: torch.Tensor, dlse: torch.Tensor, inputs: list[torch.Tensor], kernel: str,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _REGISTRY[kernel].run_backward(q, k, v, out, lse, dout, dlse, inputs, scale)


@attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, dlse, inputs, kernel, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, runtime_inputs, kernel, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *runtime_inputs)
    ctx.kernel, ctx.scale = kernel, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *runtime_inputs = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, dlse, runtime_inputs, ctx.kernel, ctx.scale)
    return dq, dk, dv, [None] * len(runtime_inputs), None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
