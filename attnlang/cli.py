"""The `attnlang` command line: check, list, show.

Every failure the user can cause is printed as an `AttnlangError` report and exits 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np

from .analysis import warn_no_pair
from .errors import AttnlangError, AttnlangWarning
from .pattern import Module, Pattern, check_module, load, stdlib, stdlib_dir
from .render import TILE_LEGEND, TOKEN_LEGEND, render_tiles, render_tokens

__all__ = ["main"]

TOKEN_LEVEL_LIMIT = 96  # above this many tokens on a side, show tiles
MAX_TILE_COLUMNS = 128
MAX_HEADS_SHOWN = 4
MAX_SHOWN_TILES = 512  # tile rows or columns `show` draws; more is no picture
PICTURE_SUFFIXES = (".png", ".pdf", ".svg")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", AttnlangWarning)  # shown, whatever the filters say
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return args.run(args)
    except AttnlangError as err:
        print(err, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `attnlang show ... | head`
        return 0


def _warning_printer(default):
    """attnlang's warnings as `warning: ...` lines; others as Python prints them."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, AttnlangWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlang", description="A compiler for attention patterns.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="parse and check pattern files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_run_check)

    listing = commands.add_parser("list", help="list patterns and their parameters")
    listing.add_argument("file", nargs="?", metavar="FILE", help="default: the standard library")
    listing.set_defaults(run=_run_list)

    show = commands.add_parser("show", help="draw a pattern's mask in the terminal")
    _add_pattern_arguments(show)
    show.add_argument("--head", type=int, default=None, help="draw only this head")
    show.add_argument("--png", metavar="FILE", help="also save the block map as a picture")
    show.set_defaults(run=_run_show)

    compile_ = commands.add_parser("compile", help="write a pattern's Triton kernels as a standalone module")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("pattern", metavar="PATTERN")
    compile_.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    compile_.add_argument("--block", default="64", metavar="B",
                          help="tile side (a power of two >= 16), BM,BN, or 'auto' (chosen by the simulator)")
    compile_.add_argument("--hw", default="h100", help="hardware for --block auto")
    compile_.add_argument("--heads", type=int, default=16, help="heads for --block auto")
    compile_.add_argument("--head-dim", type=int, default=128, help="head dim for --block auto")
    compile_.add_argument("--tune-seq", type=int, default=16384, help="length for --block auto")
    compile_.add_argument("--layout", default="row-major", metavar="LAYOUT",
                          help=LAYOUT_HELP + "; not row-major: the module takes q, k, v in that order, at --seq")
    compile_.add_argument("-o", "--output", metavar="kernel.py")
    compile_.add_argument("--target", default="sm_90", metavar="SM", help="for --report: sm_80, sm_90, ...")
    compile_.add_argument("--report", action="store_true",
                          help="compile a launch's kernels for --target (no GPU needed) and print registers, "
                               "spills, shared memory, SASS instructions per tile (uses --heads, --head-dim)")
    compile_.add_argument("--json", action="store_true", help="the report as JSON (implies --report)")
    compile_.add_argument("--seq", type=int, default=None, help="length of the launch (default: --tune-seq)")
    compile_.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="for --report")
    compile_.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=V*COUNT,...",
                          help="a runtime input for --report, e.g. doc=0*8192,1*8192 (repeatable)")
    compile_.set_defaults(run=_run_compile)

    simulate = commands.add_parser("simulate", help="predict time and speedup on a GPU")
    simulate.add_argument("file", metavar="FILE")
    simulate.add_argument("patterns", metavar="PATTERN", help="a pattern, or several separated by commas")
    simulate.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    simulate.add_argument("--seq", required=True, metavar="N[,N...]", help="sequence lengths")
    simulate.add_argument("--hw", default="h100", help="h100, h200, a100, b200, l40s, or a profile file")
    simulate.add_argument("--heads", type=int, default=16)
    simulate.add_argument("--head-dim", type=int, default=128)
    simulate.add_argument("--batch", type=int, default=1)
    simulate.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    simulate.add_argument("--block", default="128,64", metavar="BM,BN")
    simulate.add_argument("--backward", action="store_true", help="forward + backward")
    simulate.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=V*COUNT,...")
    simulate.add_argument("--costs", default="model", choices=["model", "compiled"],
                          help="price tiles by the IR's operations (model) or by the kernels' SASS, compiled for "
                               "the hardware's architecture without a GPU (compiled; cached)")
    simulate.add_argument("--layout", default="auto", metavar="LAYOUT", help=LAYOUT_HELP + " (default: auto, as "
                          "Pattern.compile)")
    simulate.add_argument("--json", action="store_true")
    simulate.add_argument("--plot", metavar="FILE", help="speedup against length, as a PNG")
    simulate.set_defaults(run=_run_simulate)

    calibrate = commands.add_parser("calibrate", help="fit the simulator to this GPU (needs CUDA)")
    calibrate.add_argument("--hw", default="h100", help="the profile to start from")
    calibrate.add_argument("--out", required=True, metavar="profile.json")
    calibrate.set_defaults(run=_run_calibrate)

    analyze = commands.add_parser("analyze", help="block sparsity, density and complexity of a pattern")
    _add_pattern_arguments(analyze)
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.set_defaults(run=_run_analyze)
    return parser


LAYOUT_HELP = ("token order: row-major, auto (chosen by the simulator), a tile shape such as 16x8 (query/key: 16x8/8x8), or 'residues D'")


def _add_pattern_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .attn file, a file of patterns/ by name, or 'stdlib'")
    parser.add_argument("pattern", metavar="PATTERN")
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                        help="bind a parameter (repeatable)")
    parser.add_argument("--seq", type=int, required=True, metavar="N", help="query length")
    parser.add_argument("--seq-k", type=int, default=None, metavar="M", help="key length (default: N)")
    parser.add_argument("--heads", type=int, default=1, metavar="H")
    parser.add_argument("--block", type=int, default=None, metavar="B", help="tile side (default: auto)")
    parser.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=V*COUNT,...",
                        help="a runtime input as runs of values, e.g. doc=0*100,1*28 (repeatable)")
    parser.add_argument("--layout", default="row-major", metavar="LAYOUT", help=LAYOUT_HELP)


# -- check / list --------------------------------------------------------------------------

def _run_check(args) -> int:
    failed = 0
    for file in args.files:
        try:
            module = load(file, check=False)
        except AttnlangError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        errors = check_module(module)
        for err in errors:
            print(err, file=sys.stderr)
        if errors:
            failed += 1
        else:
            print(f"ok  {file}: {', '.join(module.names()) or 'no patterns'}")
    return 2 if failed else 0


def _run_list(args) -> int:
    module = load(args.file) if args.file else stdlib()
    for pattern in module:
        params = ", ".join(f"{k} = {_literal(v)}" for k, v in pattern.defaults.items())
        print(f"{pattern.name}({params})")
        if pattern.doc:
            print(textwrap.fill(_first_sentence(pattern.doc), width=96, initial_indent="    ",
                                subsequent_indent="    "))
    return 0


def _first_sentence(doc: str) -> str:
    """The doc comment's first sentence, its lines joined (a comment wraps mid-sentence)."""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    end = re.search(r"[.!?](?=\s+[A-Z(`'\"]|$)", paragraph)
    return paragraph[:end.end()] if end else paragraph


def _literal(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


# -- show ----------------------------------------------------------------------------------

def _run_show(args) -> int:
    pattern = _load_pattern(args)
    seq_q, seq_k, heads = _lengths(args)
    inputs = _parse_inputs(args.inputs, pattern, max(seq_q, seq_k))
    heads_shown = _heads_to_show(pattern, heads, args.head)
    laid_out = args.layout.strip().lower() != "row-major"
    token_level = max(seq_q, seq_k) <= TOKEN_LEVEL_LIMIT and args.block is None and not laid_out
    if not token_level:
        _check_drawable(seq_q, seq_k, args.block)
    png = args.png and _output_file("--png", args.png, (".png",))
    print(f"{pattern.label}   queries {seq_q} x keys {seq_k}" + (f", {heads} heads" if heads > 1 else ""))
    if pattern.is_routed:
        r = pattern.ir.route
        print(f"note: routing picks {r.top} blocks of {r.block} tokens per {_routing_unit(r)} at run time; "
              "this is the static mask it chooses from")
    if png:
        block = args.block or _auto_block(max(seq_q, seq_k), max(seq_q, seq_k))
        block_map = pattern.analyze(seq_q, seq_k, heads, block, inputs, layout=args.layout)
        from .plots import plot_block_map
        _write("--png", png, lambda: plot_block_map(block_map, png, title=pattern.label, heads=heads_shown))
        print(f"wrote {png}")
    if token_level:
        mask = pattern.reference_mask(seq_q, seq_k, heads, inputs, static_only=True)
        if not mask.any() and not png:  # with --png, the analysis above has warned
            warn_no_pair(pattern.ir, seq_q, seq_k)
        for head in heads_shown:
            _print_head_title(pattern, head, heads_shown)
            print(render_tokens(mask[head]))
        print(TOKEN_LEGEND)
        return 0
    block = args.block or _auto_block(seq_q, seq_k)
    block_map = pattern.analyze(seq_q, seq_k, heads, block, inputs, layout=args.layout)
    if laid_out:
        order = "tiles as written" if block_map.layout.is_row_major else "tiles of the permuted tokens"
        print(f"layout {block_map.layout}: {order} ({block_map.layout_choice.reason})")
    kinds = block_map.kinds
    for head in heads_shown:
        _print_head_title(pattern, head, heads_shown)
        print(render_tiles(kinds[min(head, kinds.shape[0] - 1)], block))
    print(f"{TILE_LEGEND}   (tiles of {block} x {block} tokens)")
    return 0


def _run_compile(args) -> int:
    pattern = _load_pattern(args)
    from attnlang.codegen.runtime import _tile_shape
    from attnlang.codegen.template import standalone_source, statement_origins
    report = args.report or args.json
    if not args.output and not report:
        raise AttnlangError("compile needs -o kernel.py, or --report to compile for --target and print")
    output = args.output and _output_file("-o", args.output, (".py",))
    info = sys.stderr if args.json else sys.stdout  # --json keeps stdout for the JSON alone
    if args.block == "auto":
        from .simulator import choose_block
        choice = choose_block(pattern, args.tune_seq, args.heads, args.head_dim, "bf16", args.hw)
        print(choice.reason, file=info)
        block = choice.block
    else:
        block = _tile_shape(tuple(_int_list("--block", args.block)) if "," in args.block
                            else int(_int_list("--block", args.block)[0]))
    if args.layout.strip().lower() != "row-major" or pattern.routes_regions:  # regions route in their layout
        seq = args.tune_seq if args.seq is None else args.seq
        choice = pattern.choose_layout(args.layout, seq, seq, block, heads=args.heads, head_dim=args.head_dim,
                                       hardware=args.hw)
        print(choice.reason, file=info)
        pattern = pattern.with_layout(choice.layout, seq, seq, block)
        if not choice.layout.is_row_major:
            padded = choice.layout.lengths(seq, seq)
            print(f"note: the module takes q, k, v of {padded[0]} x {padded[1]} tokens in layout "
                  f"{choice.layout}'s order (attnlang's LayoutKernel.permute makes them)", file=info)
    if output:
        source = standalone_source(pattern.ir, block, statement_origins(pattern.decl))
        _write("-o", output, lambda: output.write_text(source))
        print(f"wrote {output}: {pattern.label}, tiles {block[0]} x {block[1]}; "
              f"call attention(q, k, v{', inputs={...}' if pattern.inputs else ''})", file=info)
    if report:
        _print_target_report(args, pattern, block)
    return 0


def _print_target_report(args, pattern: Pattern, block: tuple[int, int]) -> None:
    """`compile --report`: the launch's kernels compiled for --target (attnlang.codegen.targets)."""
    import torch

    from attnlang.codegen.targets import resolve_target
    target = resolve_target(args.target)
    seq = args.tune_seq if args.seq is None else args.seq
    _check_positive("--seq", seq)
    inputs = _parse_inputs(args.inputs, pattern, seq) if pattern.inputs else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    kernel = pattern.compile(heads=args.heads, head_dim=args.head_dim, dtype=dtype, block=block)
    # a laid-out module runs at its layout's lengths; its inputs keep the tokens' (--seq)
    lengths = (seq, seq) if pattern.layout.is_row_major else pattern.layout.lengths(seq, seq)
    result = kernel.compile_for(target, *lengths, inputs=inputs)
    print(result.to_json() if args.json else result)


def _run_simulate(args) -> int:
    from .simulator import load_hardware, simulate
    hardware = load_hardware(args.hw)
    lengths = _int_list("--seq", args.seq)
    block = tuple(_int_list("--block", args.block))
    if len(block) != 2:
        raise AttnlangError(f"--block expects BM,BN, got '{args.block}'")
    plot = args.plot and _output_file("--plot", args.plot, PICTURE_SUFFIXES)
    series = {}
    for name in args.patterns.split(","):
        args.pattern = name.strip()
        pattern = _load_pattern(args)
        results = []
        for n in lengths:
            inputs = _parse_inputs(args.inputs, pattern, n) if pattern.inputs else None
            results.append(simulate(pattern, seq=n, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                                    batch=args.batch, hardware=hardware, backward=args.backward, block=block,
                                    inputs=inputs, costs=args.costs, layout=args.layout))
        series[pattern.label] = results
    if args.json:
        print(json.dumps([r.as_dict() for results in series.values() for r in results]))
    else:
        direction = "forward + backward" if args.backward else "forward"
        print(f"{hardware.name}: B={args.batch}, H={args.heads}, D={args.head_dim}, {args.dtype}, "
              f"tiles {block[0]} x {block[1]}, {direction} (uncalibrated unless the profile was calibrated)")
        print(f"{'pattern':34} {'N':>8} {'time ms':>10} {'dense ms':>10} {'speedup':>8} {'bound':>7} "
              f"{'util':>5}  breakdown ms (mma / elementwise / memory / overhead / imbalance / permutation)")
        for label, results in series.items():
            for r in results:
                b = r.breakdown
                print(f"{label[:34]:34} {r.seq:8d} {r.time_ms:10.3f} {r.dense_time_ms:10.3f} {r.speedup:8.2f} "
                      f"{r.upper_bound:7.2f} {r.utilization:5.2f}  {b['mma']:.3f} / {b['elementwise']:.3f} / "
                      f"{b['memory']:.3f} / {b['overhead']:.3f} / {b['imbalance']:.3f} / {b['permutation']:.3f}")
    if plot:
        from .plots import plot_speedups
        _write("--plot", plot, lambda: plot_speedups(series, plot, hardware.key, args.backward))
        print(f"wrote {plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_calibrate(args) -> int:
    from .calibrate import calibrate
    fitted, error = calibrate(args.hw, args.out)
    print(f"wrote {args.out}: efficiency {fitted.efficiency}, RMS log error {error:.3f}")
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AttnlangError(f"{flag} expects comma-separated integers, got '{text}'") from None
    for value in values:
        _check_positive(flag, value)
    return values


def _run_analyze(args) -> int:
    pattern = _load_pattern(args)
    seq_q, seq_k, heads = _lengths(args)
    inputs = _parse_inputs(args.inputs, pattern, max(seq_q, seq_k))
    block = args.block or 128
    block_map = pattern.analyze(seq_q, seq_k, heads, block, inputs, layout=args.layout)
    complexity = pattern.complexity()
    closed_form = at_n = None
    if complexity.method == "derived":
        closed_form = str(complexity.pairs)
        if seq_q == seq_k and seq_q >= complexity.valid_from:
            at_n = complexity.evaluate(seq_q)
    schedule = block_map.route_schedule()
    report = {
        "pattern": pattern.name, "params": pattern.params, "seq_q": seq_q, "seq_k": seq_k, "heads": heads,
        "heads_in_map": block_map.shape[0], "block_q": block, "block_k": block,
        "counts": block_map.counts, "tile_density": block_map.tile_density, "density": block_map.density(),
        "decided_by": block_map.stats, "seconds": block_map.seconds,
        "layout": str(block_map.layout), "useful_fraction": block_map.useful_fraction(),
        "routed_tiles": block_map.routed_tiles(schedule), "route_schedule": schedule,
        "layout_reason": block_map.layout_choice.reason if block_map.layout_choice else None,
        "complexity": {"method": complexity.method, "big_o": complexity.big_o, "closed_form": closed_form,
                       "valid_from": complexity.valid_from, "pairs_at_n": at_n,
                       "exponent": complexity.exponent, "note": complexity.reason},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    counts = block_map.counts
    total = int(np.prod(block_map.shape))
    print(f"{pattern.label}   queries {seq_q} x keys {seq_k}, {heads} head(s), tiles {block} x {block}")
    print(f"  tiles         {total:,} ({block_map.shape[0]} head map(s)): {counts['full']:,} full, "
          f"{counts['partial']:,} partial, {counts['empty']:,} empty")
    print(f"  tile density  {block_map.tile_density:.4f}   (non-empty tiles / all tiles)")
    if pattern.is_routed:
        r = pattern.ir.route
        print(f"  routed        at most {block_map.routed_tiles(schedule):,} tiles visited once routing picks {r.top} "
              f"blocks of {r.block} per {_routing_unit(r)} (the counts above are the static candidates it picks from)")
        print(f"                {schedule} schedule: what the kernel runs with these tiles on an H100, D = 128, bf16")
    print(f"  useful        {block_map.useful_fraction():.4f}   (allowed pairs / pairs of visited tiles)")
    if not block_map.layout.is_row_major or block_map.layout_choice:
        padded = block_map.seq_q, block_map.seq_k
        print(f"  layout        {block_map.layout}   (tiles of the permuted tokens, {padded[0]} x {padded[1]} "
              "with padding)")
        if block_map.layout_choice:
            print(f"                {block_map.layout_choice.reason}")
    print(f"  density       {block_map.density():.4f}   (allowed pairs / all pairs, partial tiles sampled)")
    stats = block_map.stats
    print(f"  decided by    reasoning {stats['reasoning']:,}, witness points {stats['sampling']:,}, "
          f"exact evaluation {stats['exact']:,} tiles")
    if complexity.method == "derived":
        print(f"  pairs         {complexity.pairs}   for n >= {complexity.valid_from}")
        if at_n is not None:
            print(f"                = {at_n:,} at n = {seq_q}")
    method = "" if complexity.method in complexity.big_o else f"   ({complexity.method})"
    print(f"  complexity    {complexity.big_o}{method}")
    print(f"  time          {block_map.seconds * 1000:.1f} ms")
    return 0


def _print_head_title(pattern: Pattern, head: int, shown: list[int]) -> None:
    if pattern.depends_on_head or len(shown) > 1:
        print(f"head {head}:")


def _heads_to_show(pattern: Pattern, heads: int, head: int | None) -> list[int]:
    if head is not None:
        if not 0 <= head < heads:
            raise AttnlangError(f"--head must be in [0, {heads}), got {head}")
        return [head]
    if not pattern.depends_on_head:
        return [0]
    if heads <= MAX_HEADS_SHOWN:
        return list(range(heads))
    return [0, 1, heads - 2, heads - 1]


def _routing_unit(route) -> str:
    return "query token" if route.query_block == 1 else "query block"


def _auto_block(seq_q: int, seq_k: int) -> int:
    """The smallest power-of-two tile (16 or more) that draws at most MAX_TILE_COLUMNS columns
    and MAX_SHOWN_TILES rows."""
    block = 16
    while -(-seq_k // block) > MAX_TILE_COLUMNS or -(-seq_q // block) > MAX_SHOWN_TILES:
        block *= 2
    return block


def _lengths(args) -> tuple[int, int, int]:
    """--seq, --seq-k and --heads, checked; --block too (0 is not 'auto': leave it out)."""
    seq_q = args.seq
    seq_k = args.seq if args.seq_k is None else args.seq_k
    for flag, value in (("--seq", seq_q), ("--seq-k", seq_k), ("--heads", args.heads)):
        _check_positive(flag, value)
    if args.block is not None:
        _check_positive("--block", args.block)
    return seq_q, seq_k, args.heads


def _check_drawable(seq_q: int, seq_k: int, block: int | None) -> None:
    """A --block given by hand must draw at most MAX_SHOWN_TILES a side (the automatic one does)."""
    if block is None:
        return
    tiles = max(-(-seq_q // block), -(-seq_k // block))
    if tiles > MAX_SHOWN_TILES:
        fits = 1 << (-(-max(seq_q, seq_k) // MAX_SHOWN_TILES) - 1).bit_length()
        raise AttnlangError(f"--block {block} gives {tiles:,} tiles on a side; show draws at most "
                            f"{MAX_SHOWN_TILES}: pass --block {fits} or more, or leave --block out")


def _output_file(flag: str, text: str, suffixes: tuple[str, ...]) -> Path:
    """Where `flag` writes, checked before any work: an existing folder, a known suffix
    (none given: the first one is added, and the name printed is the name written)."""
    path = Path(text)
    if path.is_dir():
        raise AttnlangError(f"{flag} {text} is a folder; give a file name, e.g. {path / ('out' + suffixes[0])}")
    if not path.suffix:
        path = path.with_name(path.name + suffixes[0])
    elif path.suffix.lower() not in suffixes:
        raise AttnlangError(f"{flag} {text}: cannot write a '{path.suffix}' file; use "
                            + ", ".join(suffixes[:-1]) + (" or " if len(suffixes) > 1 else "") + suffixes[-1])
    if not path.parent.is_dir():
        raise AttnlangError(f"{flag} {text}: the folder '{path.parent}' does not exist; create it first")
    return path


def _write(flag: str, path: Path, write) -> None:
    try:
        write()
    except OSError as err:
        raise AttnlangError(f"{flag}: cannot write {path}: {err.strerror or err}") from None


def _check_positive(flag: str, value: int) -> None:
    if value < 1:
        raise AttnlangError(f"{flag} must be a positive integer, got {value}")


def _load_pattern(args) -> Pattern:
    path = Path(args.file)
    if not path.exists() and (stdlib_dir() / path.name).exists():
        path = stdlib_dir() / path.name
    module: Module = stdlib() if args.file == "stdlib" and not path.exists() else load(path)
    pattern = module[args.pattern]
    return pattern.bind(**_parse_defines(args.defines, pattern))


def _parse_defines(defines: list[str], pattern: Pattern) -> dict:
    values = {}
    for define in defines:
        name, sep, text = define.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise AttnlangError(f"-D expects NAME=VALUE, got '{define}'")
        if name not in pattern.defaults:
            pattern.bind(**{name: 0})  # raises the "no parameter, did you mean" error
        values[name] = _parse_value(name, text, pattern.defaults[name])
    return values


def _parse_value(name: str, text: str, default):
    try:
        if isinstance(default, bool):
            if text not in ("true", "false"):
                raise ValueError
            return text == "true"
        if isinstance(default, int):
            return int(text)
        return float(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise AttnlangError(f"-D {name}: expected {kind}, got '{text}'") from None


def _parse_inputs(specs: list[str], pattern: Pattern, length: int) -> dict:
    inputs = {}
    for spec in specs:
        name, sep, runs = spec.partition("=")
        if not sep or not name.strip():
            raise AttnlangError(f"--input expects NAME=V*COUNT,..., got '{spec}'")
        values: list[int] = []
        for run in runs.split(","):
            value, star, count = run.strip().partition("*")
            try:
                values += [int(value)] * (int(count) if star else 1)
            except ValueError:
                raise AttnlangError(f"--input {name.strip()}: cannot read '{run}' (expected V or V*COUNT)") from None
        inputs[name.strip()] = np.asarray(values, dtype=np.int64)
    missing = [n for n in pattern.inputs if n not in inputs]
    if missing:
        raise AttnlangError(f"pattern '{pattern.name}' needs input '{missing[0]}': pass e.g. "
                            f"--input {missing[0]}=0*{length // 2},1*{length - length // 2}")
    return inputs


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
