"""Train a tiny GQA transformer with a per-head attnlang pattern, eager and under torch.compile,
next to the same model with dense causal attention, and plot the three loss curves.

The task: copy the token seen `lag` positions back — local heads can, if their window
reaches. Two of the four query heads see a window of 8 tokens, the other two the whole
causal past; query heads share 2 key/value heads. On CPU the kernels run under the Triton
interpreter (set here before torch imports triton).

    python examples/train_tiny.py [--steps 14] [--plot losses.png]
"""

import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import attnlang  # noqa: E402

PATTERN = attnlang.parse("""
pattern local_global(window = 8) {      # heads 0-1 local, heads 2-3 global (causal)
    mask q >= k and (h >= 2 or q - k < window)
}
""")["local_global"]
VOCAB, DIM, HEADS, HEADS_KV, HEAD_DIM, TOKENS, LAG, BATCH = 16, 32, 4, 2, 8, 32, 3, 2


class Block(torch.nn.Module):
    def __init__(self, attend):
        super().__init__()
        self.attend = attend
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.q = torch.nn.Linear(DIM, HEADS * HEAD_DIM)
        self.kv = torch.nn.Linear(DIM, 2 * HEADS_KV * HEAD_DIM)
        self.mix = torch.nn.Linear(HEADS * HEAD_DIM, DIM)
        self.head = torch.nn.Linear(DIM, VOCAB)

    def forward(self, tokens):
        batch, length = tokens.shape
        x = self.embed(tokens)
        q = self.q(x).view(batch, length, HEADS, HEAD_DIM).transpose(1, 2)
        k, v = self.kv(x).view(batch, length, 2, HEADS_KV, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = self.attend(q, k, v).transpose(1, 2).reshape(batch, length, -1)
        return self.head(x + self.mix(y))


def dense_causal(q, k, v):
    k, v = (t.repeat_interleave(HEADS // HEADS_KV, dim=1) for t in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def train(model, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=generator)
        logits = model(tokens)[:, LAG:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, :-LAG].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--plot", default=None, help="save the loss curves here (PNG)")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend (inductor, aot_eager)")
    args = parser.parse_args()
    kernel = PATTERN.compile(block=16)
    torch.manual_seed(0)
    eager = Block(kernel)
    compiled_model = Block(kernel)
    dense = Block(dense_causal)
    compiled_model.load_state_dict(eager.state_dict())
    dense.load_state_dict(eager.state_dict())
    curves = {}
    for name, model in (("attnlang, eager", eager),
                        ("attnlang, torch.compile", torch.compile(compiled_model, fullgraph=True, backend=args.backend)),
                        ("dense causal (SDPA)", dense)):
        start = time.perf_counter()
        curves[name] = train(model, args.steps)
        print(f"{name:26} first loss {curves[name][0]:.3f}  last {curves[name][-1]:.3f}  "
              f"({time.perf_counter() - start:.1f} s)")
    gap = max(abs(a - b) for a, b in zip(curves["attnlang, eager"], curves["attnlang, torch.compile"]))
    print(f"eager vs compiled: largest loss difference {gap:.2e}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure, axis = plt.subplots(figsize=(6, 3.5))
        for name, losses in curves.items():
            axis.plot(losses, label=name, linestyle="--" if "compile" in name else "-")
        axis.set_xlabel("step")
        axis.set_ylabel("cross-entropy")
        axis.set_title(f"copy the token {LAG} back: {PATTERN.label}")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
