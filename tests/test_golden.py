"""Golden files: the pattern-specific part of three generated kernel modules, exactly.

The rest of a module is `codegen/kernel_template.py` itself. After an intended change to
the printer, regenerate with `ATTNLANG_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`
and review the diff.
"""

import os
import re
from pathlib import Path

import pytest

import attnlang
from attnlang.codegen.template import TEMPLATE, standalone_source, statement_origins

GOLDEN = Path(__file__).with_name("golden")
PATTERNS = {"causal": {}, "alibi": {}, "document": {}, "softcap": {"cap": 20.0}, "neighborhood2d": {}}


def pattern_part(source: str) -> str:
    """The header comment and the pattern region of a generated module."""
    header = source[:source.index('"""')]
    region = re.search(r"# <attnlang:pattern>\n.*?# </attnlang:pattern>\n", source, re.S).group(0)
    header = re.sub(r"id [0-9a-f]{12}", "id <digest>", header)  # the digest covers the template too
    return header + "...\n" + region


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_generated_source_matches_the_golden_file(name):
    pattern = attnlang.stdlib()[name].bind(**PATTERNS[name])
    got = pattern_part(standalone_source(pattern.ir, (64, 64), statement_origins(pattern.decl)))
    path = GOLDEN / f"{name}.py.txt"
    if os.environ.get("ATTNLANG_UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"{name}: generated source differs from {path}"


def test_generated_lines_fit_and_the_template_is_real_python():
    compile(TEMPLATE.read_text(), str(TEMPLATE), "exec")
    for name, params in PATTERNS.items():
        pattern = attnlang.stdlib()[name].bind(**params)
        source = standalone_source(pattern.ir, (64, 64), statement_origins(pattern.decl))
        compile(source, name, "exec")
        long = [line for line in source.splitlines() if len(line) > 120]
        assert not long, f"{name}: {long[0]}"
