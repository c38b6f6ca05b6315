"""Tile loops in SASS: which instructions one iteration of a kernel's tile loop executes.

The kernels walk their tiles in loops whose bodies hold the tensor-core instructions, so the
loops worth counting are found in the disassembly without knowing how Triton laid them out:

1. `nvdisasm -c -gi` prints each instruction with its address and, through the inlining
   chain, every source line it came from (the kernel line, the `_forward_tile` line, the
   `_mask` line ...).
2. Basic blocks start at branch targets and after branches; edges are the branch targets
   and the fall-throughs (an unpredicated `BRA` or `EXIT` has none).
3. Loops are natural loops: an edge u -> h where h dominates u is a back edge; the body is h
   and every block that reaches u without passing h. Back edges to one header form one loop.
4. A tile loop is a loop with a matrix instruction (`HMMA`, `HGMMA`, `UTC*MMA`, ...) and no
   inner loop that has one. Software pipelining keeps one tile per iteration.
5. Each acyclic path from the header to a latch is one possible iteration (inner back
   edges are not followed: a retry loop of a barrier wait counts once). The instructions
   keep their source lines through inlining, so a path is PARTIAL when its own blocks (those
   not on every path of the loop) run more source that only PARTIAL tiles run than source
   that only FULL tiles run, else FULL; which lines those are, `attnlang.codegen.targets.marker_lines`
   reads off the template (`_mask`, `if PARTIAL:`, calls passing PARTIAL=True or False).
   A kernel whose FULL and PARTIAL tiles have loops of their own has one path per loop.

The count of a kind is its shortest path: branches that only add work (a stall's retry, an
out-of-line slow path) are not what a tile costs. The kernels' mask and logit are
branch-free (`tl.where`), so a kind has one path in practice; `TileLoop.paths` shows all.
Checked against the issue's hand audit of the kernel at 3b92360 (causal, sm_90, d=128, bf16,
64x64): 619 / 698 / 889 / 738 warp instructions per 1000 scores, forward FULL / PARTIAL,
dK/dV FULL, dQ FULL, exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise

__all__ = ["Instruction", "TileLoop", "parse", "tile_loops"]

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;?\s*(?:/\*.*\*/)?\s*$")
_LABEL = re.compile(r"^\s*(\.L\w+):")
_LINE_INFO = re.compile(r'"([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\((\.L\w+)\)")
_PREDICATE = re.compile(r"^@!?U?P(\d|T)\s+")
MAX_PATHS = 4096


@dataclass
class Instruction:
    address: int
    text: str  # without the predicate guard
    predicated: bool
    lines: frozenset[tuple[str, int]]  # (file, line) of the whole inlining chain

    @property
    def opcode(self) -> str:
        return self.text.split()[0] if self.text else ""

    @property
    def target(self) -> str | None:
        match = _TARGET.search(self.text)
        return match.group(1) if match else None


@dataclass
class TileLoop:
    """One tile loop: where it is, and each path through its body as (kind, instructions)."""

    start: int  # address of the header's first instruction
    end: int  # address of the last instruction of the loop
    paths: list[tuple[str, int]] = field(default_factory=list)

    def count(self, kind: str) -> int | None:
        counts = [n for k, n in self.paths if k == kind]
        return min(counts) if counts else None


def parse(listing: str) -> tuple[list[Instruction], dict[str, int]]:
    """Instructions in address order and the address each label names, from `nvdisasm -gi`."""
    instructions: list[Instruction] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    chain: frozenset[tuple[str, int]] = frozenset()
    lines: list[tuple[str, str]] = []
    for raw in listing.splitlines():
        stripped = raw.strip()
        if stripped.startswith("//##"):
            pending.append(stripped)
            continue
        label = _LABEL.match(raw)
        if label:
            lines.append(("label", label.group(1)))
            continue
        match = _INSTRUCTION.match(raw)
        if not match:
            continue
        if pending:
            chain = frozenset((f, int(n)) for info in pending for f, n in _LINE_INFO.findall(info))
            pending = []
        address, text = int(match.group(1), 16), match.group(2).strip()
        guard = _PREDICATE.match(text)
        predicated = bool(guard) and not text.startswith("@PT")
        instructions.append(Instruction(address, text[guard.end():] if guard else text, predicated, chain))
        lines.append(("instruction", str(len(instructions) - 1)))
    next_label: list[str] = []
    for kind, value in lines:
        if kind == "label":
            next_label.append(value)
        else:
            for name in next_label:
                labels[name] = instructions[int(value)].address
            next_label = []
    return instructions, labels


def _is_branch(instruction: Instruction) -> bool:
    return instruction.opcode.split(".")[0] in ("BRA", "BRX", "JMP", "JMX")


def _ends_block(instruction: Instruction) -> bool:
    return _is_branch(instruction) or instruction.opcode.split(".")[0] in ("EXIT", "RET", "KILL")


def _falls_through(instruction: Instruction) -> bool:
    if not _ends_block(instruction):
        return True
    # a guard, or a condition operand before the target (`BRA.U !UP0, `(...)`), makes it conditional
    operands = instruction.text.split(None, 1)[1] if " " in instruction.text else ""
    return instruction.predicated or (_is_branch(instruction) and not operands.startswith("`"))


@dataclass
class _Block:
    instructions: list[Instruction]
    successors: list[int] = field(default_factory=list)


def _blocks(instructions: list[Instruction], labels: dict[str, int]) -> list[_Block]:
    leaders = {instructions[0].address} | set(labels.values())
    for before, after in pairwise(instructions):
        if _ends_block(before):
            leaders.add(after.address)
    blocks: list[_Block] = []
    for instruction in instructions:
        if instruction.address in leaders or not blocks:
            blocks.append(_Block([]))
        blocks[-1].instructions.append(instruction)
    index = {block.instructions[0].address: i for i, block in enumerate(blocks)}
    for i, block in enumerate(blocks):
        last = block.instructions[-1]
        if _is_branch(last) and last.target in labels:
            block.successors.append(index[labels[last.target]])
        if _falls_through(last) and i + 1 < len(blocks):
            block.successors.append(i + 1)
    return blocks


def _dominators(blocks: list[_Block]) -> list[set[int]]:
    """Iterative dominator sets from block 0; unreachable blocks dominate nothing useful."""
    everything = set(range(len(blocks)))
    predecessors: list[list[int]] = [[] for _ in blocks]
    for i, block in enumerate(blocks):
        for s in block.successors:
            predecessors[s].append(i)
    dominators = [everything.copy() for _ in blocks]
    dominators[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in range(1, len(blocks)):
            incoming = [dominators[p] for p in predecessors[i]]
            new = (set.intersection(*incoming) if incoming else set()) | {i}
            if new != dominators[i]:
                dominators[i], changed = new, True
    return dominators


def _natural_loops(blocks: list[_Block]) -> dict[int, tuple[set[int], set[int]]]:
    """header -> (body, latches) for every header of a back edge."""
    dominators = _dominators(blocks)
    predecessors: list[list[int]] = [[] for _ in blocks]
    for i, block in enumerate(blocks):
        for s in block.successors:
            predecessors[s].append(i)
    loops: dict[int, tuple[set[int], set[int]]] = {}
    for u, block in enumerate(blocks):
        for h in block.successors:
            if h not in dominators[u]:
                continue
            body, latches = loops.setdefault(h, ({h}, set()))
            latches.add(u)
            stack = [u]
            while stack:
                node = stack.pop()
                if node not in body:
                    body.add(node)
                    stack.extend(predecessors[node])
    return loops


def _has_mma(block: _Block) -> bool:
    return any("MMA" in i.opcode.split(".")[0] for i in block.instructions)


def _paths(blocks: list[_Block], header: int, body: set[int], latches: set[int],
           back_edges: set[tuple[int, int]]) -> list[list[int]]:
    """Acyclic paths header -> latch inside the body, skipping every back edge."""
    paths: list[list[int]] = []
    stack = [(header, [header])]
    while stack and len(paths) < MAX_PATHS:
        node, path = stack.pop()
        if node in latches:
            paths.append(path)
        for s in blocks[node].successors:
            if s in body and (node, s) not in back_edges and s not in path:
                stack.append((s, path + [s]))
    return paths


def tile_loops(listing: str, partial_lines: set[tuple[str, int]],
               full_lines: set[tuple[str, int]]) -> list[TileLoop]:
    """The tile loops of one kernel's `nvdisasm -c -gi` listing, in address order.

    `partial_lines` and `full_lines` are (file, line) pairs of source that only a PARTIAL or
    only a FULL tile runs (see `attnlang.codegen.targets.marker_lines`); a path is classified by the
    marked instructions of its own blocks, those not on every path of the loop.
    """
    instructions, labels = parse(listing)
    if not instructions:
        return []
    blocks = _blocks(instructions, labels)
    loops = _natural_loops(blocks)
    back_edges = {(u, h) for h, (_, latches) in loops.items() for u in latches}
    with_mma = {h for h, (body, _) in loops.items() if any(_has_mma(blocks[b]) for b in body)}
    innermost = [h for h in with_mma
                 if not any(other != h and other in loops[h][0] for other in with_mma)]
    result = []
    for header in sorted(innermost, key=lambda h: blocks[h].instructions[0].address):
        body, latches = loops[header]
        loop = TileLoop(blocks[header].instructions[0].address,
                        max(blocks[b].instructions[-1].address for b in body))
        paths = _paths(blocks, header, body, latches, back_edges)
        common = set.intersection(*(set(path) for path in paths)) if len(paths) > 1 else set()
        for path in paths:
            own = [i for b in path if b not in common for i in blocks[b].instructions]
            partial = sum(bool(i.lines & partial_lines) for i in own)
            full = sum(bool(i.lines & full_lines) for i in own)
            count = sum(len(blocks[b].instructions) for b in path)
            loop.paths.append(("partial" if partial > full else "full", count))
        result.append(loop)
    return result
