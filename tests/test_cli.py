"""The command line: check, list, show; errors exit 2 with a report, never a traceback."""

import subprocess
import sys

import pytest

import attnlang
from attnlang.cli import main

PATTERNS = sorted(str(p) for p in attnlang.stdlib_dir().glob("*.attn"))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_is_clean_on_the_standard_library(capsys):
    code, out, err = run(capsys, "check", *PATTERNS)
    assert code == 0 and err == ""
    assert out.count("ok  ") == len(PATTERNS)


def test_check_reports_every_failing_pattern_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern a() {\n    mask q -\n}\n")
    worse = tmp_path / "worse.attn"
    worse.write_text("pattern b() { mask windw }\npattern c() { mask q }\npattern d() { mask true }\n")
    code, out, err = run(capsys, "check", str(bad), str(worse))
    assert code == 2
    assert f"{bad}:3:1: error: unexpected '}}'" in err
    assert f"{worse}:1:20: error: unknown name 'windw'" in err
    assert f"{worse}:2:20: error: mask expects a boolean expression, found int" in err
    assert "Traceback" not in err


def test_list_shows_parameters_and_summaries(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "streaming(window = 1024, sinks = 4)" in out
    assert "StreamingLLM" in out
    assert "softcap(cap = 30.0)" in out


def test_show_token_level(capsys):
    code, out, _ = run(capsys, "show", "patterns/streaming.attn", "streaming", "--seq", "6",
                       "-D", "window=2", "-D", "sinks=1")
    assert code == 0
    rows = [line[-12:] for line in out.splitlines()[2:8]]  # 6 keys, two characters each
    assert rows[0] == "██··········"
    assert rows[5] == "██······████"


def test_show_tile_level_for_long_sequences(capsys):
    code, out, _ = run(capsys, "show", "patterns/sliding_window.attn", "sliding_window", "--seq", "1024",
                       "--block", "128", "-D", "window=256")
    assert code == 0
    grid = [line[5:] for line in out.splitlines()[2:10]]
    assert grid[0] == "▒▒" + "··" * 7
    assert grid[3] == "··" * 1 + "▒▒" + "██" + "▒▒" + "··" * 4
    assert "full" in out and "partial" in out


def test_show_heads_of_a_per_head_pattern(capsys):
    code, out, _ = run(capsys, "show", "patterns/duo.attn", "duo", "--seq", "16", "--heads", "3",
                       "-D", "retrieval_heads=1", "-D", "window=4", "-D", "sinks=1")
    assert code == 0 and out.count("head ") == 3


def test_show_document_needs_and_takes_inputs(capsys):
    code, _, err = run(capsys, "show", "patterns/document.attn", "document", "--seq", "8")
    assert code == 2 and "--input doc=0*4,1*4" in err
    code, out, _ = run(capsys, "show", "patterns/document.attn", "document", "--seq", "8", "--input", "doc=0*4,1*4")
    assert code == 0 and "████████········" in out


@pytest.mark.parametrize("argv, message", [
    (["show", "patterns/streaming.attn", "streeming", "--seq", "8"], "no pattern 'streeming'; did you mean 'streaming'?"),
    (["show", "patterns/streaming.attn", "streaming", "--seq", "8", "-D", "windw=3"], "did you mean 'window'"),
    (["show", "patterns/streaming.attn", "streaming", "--seq", "8", "-D", "window=big"], "-D window: expected int, got 'big'"),
    (["show", "patterns/streaming.attn", "streaming", "--seq", "8", "-D", "window"], "-D expects NAME=VALUE"),
    (["show", "patterns/streaming.attn", "streaming", "--seq", "0"], "--seq must be a positive integer"),
    (["show", "patterns/duo.attn", "duo", "--seq", "8", "--heads", "2", "--head", "5"], "--head must be in [0, 2)"),
    (["show", "nothere.attn", "p", "--seq", "8"], "cannot read nothere.attn"),
])
def test_bad_arguments_are_reported_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_show_finds_standard_library_files_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "show", "causal.attn", "causal", "--seq", "4")
    assert code == 0 and "causal()" in out


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "attnlang", "check", PATTERNS[0]],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ok  ")


def test_analyze_prints_counts_densities_and_complexity(capsys):
    code, out, _ = run(capsys, "analyze", "patterns/sliding_window.attn", "sliding_window", "--seq", "4096",
                       "-D", "window=512")
    assert code == 0
    assert "tile density" in out and "O(n*window)" in out and "(derived)" in out
    assert "= 1,966,336 at n = 4096" in out  # 512 * 4096 - 512 * 511 / 2


def test_analyze_json_has_the_promised_fields(capsys):
    import json
    code, out, _ = run(capsys, "analyze", "patterns/duo.attn", "duo", "--seq", "1000", "--seq-k", "900",
                       "--heads", "4", "--block", "64", "--json")
    report = json.loads(out)
    for field in ("pattern", "params", "seq_q", "seq_k", "heads", "block_q", "block_k", "counts", "tile_density"):
        assert field in report
    assert report["seq_k"] == 900 and report["heads_in_map"] == 4
    assert sum(report["counts"].values()) == 4 * 16 * 15


def test_show_png_writes_a_picture(tmp_path, capsys):
    path = tmp_path / "map.png"
    code, out, _ = run(capsys, "show", "patterns/duo.attn", "duo", "--seq", "2048", "--heads", "2",
                       "-D", "retrieval_heads=1", "-D", "window=256", "--png", str(path))
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
