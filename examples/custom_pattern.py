"""Write your own pattern: compose the standard library, add a bias, read the errors."""

import torch

import attnlang

SOURCE = """
# Local attention inside packed documents, with an ALiBi-style penalty and a soft cap.
pattern local_document(window = 64, cap = 20.0) {
    use document()                      # masks across documents; brings `input doc`
    mask q - k < window
    bias -0.05 * (q - k)
    score cap * tanh(score / cap)
}
"""

pattern = attnlang.parse(SOURCE, "local_document.attn")["local_document"]
print(pattern.ir)

docs = torch.repeat_interleave(torch.arange(4), 50)  # four documents of 50 tokens
q, k, v = (torch.randn(2, 4, 200, 32) for _ in range(3))
out = pattern.bind(window=16).reference_attention(q, k, v, inputs={"doc": docs})
print("output:", tuple(out.shape), "finite:", bool(torch.isfinite(out).all()))

# Errors point at the token, with a suggestion:
try:
    attnlang.parse("pattern oops(window = 4) {\n    mask q - k < windw\n}", "oops.attn")
except attnlang.AttnlangError as err:
    print(err)
