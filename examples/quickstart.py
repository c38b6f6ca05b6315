"""A tour: load the standard library, specialize a pattern, inspect it, run the oracle."""

import numpy as np
import torch

import attnlang

lib = attnlang.stdlib()
print("standard library:", ", ".join(lib.names()))

pattern = lib["streaming"].bind(window=6, sinks=2)
print(f"\n{pattern.label}\n{pattern.ir}")

mask = pattern.reference_mask(12, 12)[0]
print("allowed pairs:", int(mask.sum()), "of", mask.size)
print("\n".join("".join("█" if x else "·" for x in row) for row in mask))

torch.manual_seed(0)
q, k, v = (torch.randn(1, 4, 12, 16) for _ in range(3))
out, lse = pattern.reference_attention(q, k, v, return_lse=True)
print("\noutput", tuple(out.shape), "LSE of query 0, head 0:", float(lse[0, 0, 0]))

docs = np.repeat([0, 1, 2], [5, 4, 3])
print("\ndocument mask, three packed documents:")
print(lib["document"].reference_mask(12, 12, inputs={"doc": docs})[0].astype(int))
