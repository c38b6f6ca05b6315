"""The kernel as a torch custom op: opcheck, torch.compile(fullgraph=True) forward and
backward on CPU (Triton interpreter), training to the reference's losses, and no
recompilation across sequence lengths."""

import pytest
import torch

import attnlang
from attnlang.codegen import op


class TinyAttention(torch.nn.Module):
    """One GQA attention layer: 4 query heads over 2 key/value heads of dim 8."""

    def __init__(self, attend, dim=32, heads=4, heads_kv=2, head_dim=8):
        super().__init__()
        self.attend, self.heads, self.heads_kv, self.head_dim = attend, heads, heads_kv, head_dim
        self.q = torch.nn.Linear(dim, heads * head_dim)
        self.kv = torch.nn.Linear(dim, 2 * heads_kv * head_dim)
        self.out = torch.nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q = self.q(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(batch, tokens, 2, self.heads_kv, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self.attend(q, k, v)
        return self.out(y.transpose(1, 2).reshape(batch, tokens, -1))


def pattern():
    return attnlang.parse("""
pattern hybrid() {
    mask q >= k and (h < 2 or q - k < 6)
    bias -0.1 * (q - k)
}""")["hybrid"]


def train(model, steps=3, tokens=37, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        x = torch.randn(2, tokens, 32)
        loss = (model(x) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def compiled_and_reference(p, kernel):
    """A TinyAttention on `kernel` under torch.compile(fullgraph=True), and one on the reference
    with the same weights."""
    torch.manual_seed(1)
    model = TinyAttention(kernel)
    reference = TinyAttention(lambda q, k, v: p.reference_attention(q, k, v))
    reference.load_state_dict(model.state_dict())
    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, backend="aot_eager"), reference


def test_a_compiled_model_trains_to_the_reference_losses():
    p = pattern()
    compiled, reference = compiled_and_reference(p, p.compile(block=16))
    losses, expected = train(compiled), train(reference)
    assert losses == pytest.approx(expected, rel=1e-4)


def test_new_lengths_do_not_recompile():
    kernel = pattern().compile(block=16)
    torch._dynamo.reset()
    calls = []

    def counting_backend(graph, example_inputs):
        calls.append(graph)
        return graph.forward

    model = torch.compile(TinyAttention(kernel), fullgraph=True, dynamic=True, backend=counting_backend)
    for tokens in (24, 37, 50, 61):
        model(torch.randn(1, tokens, 32)).sum().backward()
    assert len(calls) == 1, f"{len(calls)} graphs for 4 lengths"


def test_opcheck():
    kernel = pattern().compile(block=16)
    q = torch.randn(1, 4, 20, 16, requires_grad=True)
    k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(2))
    torch.library.opcheck(op.attention_op, (q, k, v, [], kernel._key, 0.25))


def test_functional_attention_matches_the_kernel():
    p = attnlang.stdlib()["sliding_window"].bind(window=7)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    out, lse = attnlang.attention(q, k, v, p, return_lse=True)
    torch.testing.assert_close(out, p.reference_attention(q, k, v), rtol=2e-4, atol=2e-5)
    assert attnlang.attention(q, k, v, p, scale=0.5).shape == q.shape
