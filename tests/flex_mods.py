"""Every static stdlib pattern written by hand as a FlexAttention `mask_mod`.

These are written independently of attnlang (plain torch, their own hash), so comparing
`Pattern.reference_mask` with `create_mask(mod)` checks the language, the lowering and the
reference evaluator at once. Each entry: pattern name → (params, factory), where
factory(params, n_q, n_k, heads, inputs) returns a mask_mod.
"""

import torch


def _floordiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def torch_hash(*values):
    """The documented hash, re-implemented on int64 tensors with explicit 32-bit masking."""
    m32 = 0xFFFFFFFF

    def fmix(x):
        x = x ^ (x >> 16)
        x = (x * 0x85EBCA6B) & m32
        x = x ^ (x >> 13)
        x = (x * 0xC2B2AE35) & m32
        return x ^ (x >> 16)

    h = torch.as_tensor(0x9E3779B9, dtype=torch.int64)
    for v in values:
        h = fmix(h ^ (torch.as_tensor(v, dtype=torch.int64) & m32))
    return h >> 1


def _bit_length(d):
    # independent of log2: count the powers of two not above d
    return sum((d >= 2**i).to(torch.int64) for i in range(40))


def causal(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: q >= k


def sliding_window(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: (q >= k) & (q - k < p["window"])


def streaming(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: (q >= k) & ((q - k < p["window"]) | (k < p["sinks"]))


def prefix_lm(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: (q >= k) | (k < p["prefix"])


def document(p, n_q, n_k, heads, inputs):
    doc = torch.as_tensor(inputs["doc"])
    return lambda b, h, q, k: (doc[q] == doc[k]) & (q >= k)


def dilated(p, n_q, n_k, heads, inputs):
    w, d = p["window"], p["dilation"]
    return lambda b, h, q, k: ((q - k).abs() < w * d) & ((q - k) % d == 0)


def strided(p, n_q, n_k, heads, inputs):
    s = p["stride"]
    return lambda b, h, q, k: (q >= k) & ((q - k < s) | ((q - k) % s == 0))


def duo(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: (q >= k) & ((h < p["retrieval_heads"]) | (q - k < p["window"]) | (k < p["sinks"]))


def longformer(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: ((q - k).abs() <= p["window"] // 2) | (q < p["global_tokens"]) | (k < p["global_tokens"])


def bigbird(p, n_q, n_k, heads, inputs):
    blk = p["block"]
    key_blocks = -(-n_k // blk)

    def mod(b, h, q, k):
        qb, kb = _floordiv(q, blk), _floordiv(k, blk)
        window = (qb - kb).abs() <= p["window_blocks"] // 2
        glob = (qb < p["global_blocks"]) | (kb < p["global_blocks"])
        rand = torch_hash(p["seed"], h, qb, kb) % key_blocks < p["random_blocks"]
        return window | glob | rand
    return mod


def longnet(p, n_q, n_k, heads, inputs):
    s, r = p["segment"], p["ratio"]

    def mod(b, h, q, k):
        levels = _floordiv(q, s) == _floordiv(k, s)
        for dilation in (r, r * r):
            seg = s * dilation
            levels = levels | ((_floordiv(q, seg) == _floordiv(k, seg))
                               & ((q - h) % dilation == 0) & ((k - h) % dilation == 0))
        return ((q >= k) | (not p["causal"])) & levels
    return mod


def _yx(t, width):
    return _floordiv(t, width), t % width


def neighborhood2d(p, n_q, n_k, heads, inputs):
    hh, ww, r = p["height"], p["width"], p["kernel"] // 2

    def mod(b, h, q, k):
        (qy, qx), (ky, kx) = _yx(q, ww), _yx(k, ww)
        return (((ky - qy.clamp(r, hh - 1 - r)).abs() <= r)
                & ((kx - qx.clamp(r, ww - 1 - r)).abs() <= r))
    return mod


def neighborhood3d(p, n_q, n_k, heads, inputs):
    sizes = (p["frames"], p["height"], p["width"])
    radii = (p["kernel_t"] // 2, p["kernel_h"] // 2, p["kernel_w"] // 2)

    def coords(t):
        return _floordiv(t, sizes[1] * sizes[2]), _floordiv(t, sizes[2]) % sizes[1], t % sizes[2]

    def mod(b, h, q, k):
        allowed = torch.ones_like(q, dtype=torch.bool)
        for qc, kc, size, r in zip(coords(q), coords(k), sizes, radii):
            allowed = allowed & ((kc - qc.clamp(r, size - 1 - r)).abs() <= r)
        return allowed
    return mod


def sliding_tile(p, n_q, n_k, heads, inputs):
    tiles = (p["frames"] // p["tile_t"], p["height"] // p["tile_h"], p["width"] // p["tile_w"])
    tile_tokens = p["tile_t"] * p["tile_h"] * p["tile_w"]
    radii = (p["window_t"] // 2, p["window_h"] // 2, p["window_w"] // 2)

    def tile_coords(t):
        tile = _floordiv(t, tile_tokens)
        return _floordiv(tile, tiles[1] * tiles[2]), _floordiv(tile, tiles[2]) % tiles[1], tile % tiles[2]

    def mod(b, h, q, k):
        allowed = torch.ones_like(q, dtype=torch.bool)
        for qc, kc, size, r in zip(tile_coords(q), tile_coords(k), tiles, radii):
            allowed = allowed & ((kc - qc.clamp(r, size - 1 - r)).abs() <= r)
        return allowed
    return mod


def swin(p, n_q, n_k, heads, inputs):
    w = p["window"]

    def mod(b, h, q, k):
        (qy, qx), (ky, kx) = _yx(q, p["width"]), _yx(k, p["width"])
        return (_floordiv(qy, w) == _floordiv(ky, w)) & (_floordiv(qx, w) == _floordiv(kx, w))
    return mod


def swin_shifted(p, n_q, n_k, heads, inputs):
    """Swin's own recipe: roll by -shift, window-partition, mask pairs from different regions."""
    hh, ww, w, s = p["height"], p["width"], p["window"], p["shift"]

    def region(y, size):  # regions of the rolled image: [0, size-w), [size-w, size-s), [size-s, size)
        rolled = (y - s) % size
        return (rolled >= size - w).to(torch.int64) + (rolled >= size - s).to(torch.int64), _floordiv(rolled, w)

    def mod(b, h, q, k):
        (qy, qx), (ky, kx) = _yx(q, ww), _yx(k, ww)
        (qry, qwy), (kry, kwy) = region(qy, hh), region(ky, hh)
        (qrx, qwx), (krx, kwx) = region(qx, ww), region(kx, ww)
        return (qwy == kwy) & (qwx == kwx) & (qry == kry) & (qrx == krx)
    return mod


def halonet(p, n_q, n_k, heads, inputs):
    blk, halo = p["block"], p["halo"]

    def mod(b, h, q, k):
        (qy, qx), (ky, kx) = _yx(q, p["width"]), _yx(k, p["width"])
        y0, x0 = _floordiv(qy, blk) * blk, _floordiv(qx, blk) * blk
        return ((ky >= y0 - halo) & (ky < y0 + blk + halo) & (kx >= x0 - halo) & (kx < x0 + blk + halo))
    return mod


def radial(p, n_q, n_k, heads, inputs):
    f, mw = p["frame_tokens"], p["min_window"]

    def mod(b, h, q, k):
        qt, qs = _floordiv(q, f), q % f
        kt, ks = _floordiv(k, f), k % f
        d = (qt - kt).abs()
        window = f / (2.0 ** _bit_length(d))
        stride = torch.clamp(torch.floor(mw / window).to(torch.int64), min=1)
        near = ((qs - ks).abs() <= torch.clamp(window, min=mw)) & (d % stride == 0)
        return (kt == 0) & p["sink"] | near
    return mod


def cross_causal(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: q + (n_k - n_q) >= k


def block_local(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: _floordiv(q, p["block"]) == _floordiv(k, p["block"])


def dense(p, n_q, n_k, heads, inputs):
    return lambda b, h, q, k: q >= 0


# Small parameters, so that every mask has structure at a few hundred tokens. A routing
# pattern's entry is its static mask (the routing is checked in tests/test_routing.py).
ROUTED = ("moba", "biformer", "quest", "nsa_selected", "vmoba")
MODS = {
    "causal": ({}, causal),
    "sliding_window": ({"window": 37}, sliding_window),
    "streaming": ({"window": 29, "sinks": 3}, streaming),
    "prefix_lm": ({"prefix": 45}, prefix_lm),
    "document": ({}, document),
    "dilated": ({"window": 11, "dilation": 3}, dilated),
    "strided": ({"stride": 17}, strided),
    "alibi": ({}, causal),
    "retention_decay": ({}, causal),
    "softcap": ({"cap": 5.0}, causal),
    "moba": ({"block": 32, "top": 2}, causal),
    "duo": ({"retrieval_heads": 1, "window": 23, "sinks": 2}, duo),
    "longformer": ({"window": 24, "global_tokens": 3}, longformer),
    "bigbird": ({"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 7}, bigbird),
    "longnet": ({"segment": 16, "ratio": 2, "causal": True}, longnet),
    "neighborhood2d": ({"height": 20, "width": 20, "kernel": 5}, neighborhood2d),
    "neighborhood3d": ({"frames": 4, "height": 6, "width": 10, "kernel_t": 3, "kernel_h": 3, "kernel_w": 5},
                       neighborhood3d),
    "sliding_tile": ({"frames": 4, "height": 8, "width": 12, "tile_t": 2, "tile_h": 4, "tile_w": 4,
                      "window_t": 1, "window_h": 3, "window_w": 3}, sliding_tile),
    "swin": ({"height": 20, "width": 20, "window": 4}, swin),
    "swin_shifted": ({"height": 20, "width": 20, "window": 4, "shift": 2}, swin_shifted),
    "halonet": ({"height": 20, "width": 20, "block": 4, "halo": 1}, halonet),
    "radial": ({"frames": 8, "frame_tokens": 40, "min_window": 4, "sink": True}, radial),
    "biformer": ({"height": 8, "width": 8, "region": 4, "top": 2}, dense),
    "vmoba": ({"frames": 2, "height": 4, "width": 8, "ct": 2, "cy": 2, "cx": 4, "threshold": 0.5, "top": 3}, dense),
    "quest": ({"page": 8, "top": 3}, causal),
    "nsa_selected": ({"block": 16, "top": 2}, causal),
    "cross_causal": ({}, cross_causal),
    "block_local": ({"block": 24}, block_local),
}
