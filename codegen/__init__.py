"""Triton code generation for attnlang patterns.

    triton_printer   IR -> Triton expressions (one method per IR node)
    derivative       d logit / d score, for the backward pass
    template         the kernel template (forward, dK/dV, dQ) and the standalone module
    runtime          AttentionKernel: block tables on the device, autograd, caches
    targets          a launch's kernels compiled for sm_80/sm_90/... without a GPU: fit, resources
    sass             tile loops in the disassembly: instructions per FULL / PARTIAL iteration

`Pattern.compile` is the entry point; `attnlang compile -o` writes the standalone module.
"""
