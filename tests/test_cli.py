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


# -- user errors found by trying the tool: each is a report and exit 2, never a traceback -----

FORWARDING = """
pattern pairs_of(group = 4) {
    mask q // group == k // group
}
pattern with_sinks(group = 4, sinks = 2) {
    mask pairs_of(group) or (k < sinks and q >= k)
}
pattern used(group = 4) {
    use pairs_of(group)
}
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.attn").write_bytes(b"pattern p() {\n    mask q >= k  # caf\xe9\n}\n")
    (tmp_path / "forwarding.attn").write_text(FORWARDING)
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["check", "latin1.attn"], "latin1.attn:2:23: error: the file is not UTF-8 text: byte 0xe9"),
    (["list", "latin1.attn"], "latin1.attn:2:23: error: the file is not UTF-8 text"),
    (["show", "latin1.attn", "p", "--seq", "8"], "not UTF-8 text"),
    (["show", "stdlib", "causal", "--seq", "10000000", "--block", "16"],
     "--block 16 gives 625,000 tiles on a side; show draws at most 512: pass --block 32768 or more"),
    (["analyze", "stdlib", "causal", "--seq", "1099511627776"], "the analysis stops there to bound its memory"),
    (["compile", "stdlib", "causal", "-o", "missing_dir/k.py"], "the folder 'missing_dir' does not exist"),
    (["compile", "stdlib", "causal", "-o", "folder"], "-o folder is a folder; give a file name"),
    (["show", "stdlib", "causal", "--seq", "64", "--png", "missing_dir/x.png"], "the folder 'missing_dir' does not"),
    (["show", "stdlib", "causal", "--seq", "64", "--png", "x.jpg"], "cannot write a '.jpg' file; use .png"),
    (["simulate", "stdlib", "causal", "--seq", "4096", "--plot", "missing_dir/x.png"], "'missing_dir' does not"),
    (["simulate", "stdlib", "causal", "--seq", "4096", "--plot", "x.txt"],
     "--plot x.txt: cannot write a '.txt' file; use .png, .pdf or .svg"),
    (["simulate", "stdlib", "causal", "--seq", "4096", "--plot", "folder"], "--plot folder is a folder"),
    (["show", "stdlib", "causal", "--seq", "200", "--block", "0"], "--block must be a positive integer, got 0"),
    (["analyze", "stdlib", "causal", "--seq", "200", "--block", "0"], "--block must be a positive integer, got 0"),
])
def test_user_errors_are_reports(files, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not list(files.glob("missing_dir*")) and not (files / "x.txt").exists()


def test_a_huge_analysis_runs_in_bounded_memory(capsys):
    code, out, err = run(capsys, "analyze", "stdlib", "causal", "--seq", "10000000", "--block", "16")
    assert code == 0 and "625,000 partial" in out and "= 50,000,005,000,000 at n = 10000000" in out


def test_a_picture_name_without_a_suffix_is_written_as_png_and_said_so(files, capsys):
    code, out, _ = run(capsys, "simulate", "stdlib", "causal", "--seq", "4096", "--plot", "speedup")
    assert code == 0 and "wrote speedup.png" in out and (files / "speedup.png").exists()


@pytest.mark.parametrize("name", ["with_sinks", "used"])
def test_forwarded_parameters_reach_analyze_and_complexity(files, capsys, name):
    code, out, err = run(capsys, "analyze", "forwarding.attn", name, "--seq", "1024")
    assert code == 0 and "compile-time constant" not in err
    pattern = attnlang.load(files / "forwarding.attn")[name]
    complexity = pattern.complexity()
    if complexity.method == "derived":  # the forwarded parameter stays a symbol of the caller
        assert "group" in str(complexity.pairs)
        for group in (2, 8):
            bound = pattern.bind(group=group)
            assert bound.complexity().evaluate(1024) == bound.reference_mask(1024, 1024, 1).sum()


def test_a_pattern_that_allows_no_pair_warns(capsys):
    for argv in (["show", "stdlib", "sliding_window", "--seq", "64", "-D", "window=-5"],
                 ["analyze", "stdlib", "sliding_window", "--seq", "640", "-D", "window=-5"]):
        code, out, err = run(capsys, *argv)
        assert code == 0 and "warning: pattern 'sliding_window(window=-5)' allows no (query, key) pair" in err


def test_analyze_names_the_method_once(capsys):
    _, out, _ = run(capsys, "analyze", "stdlib", "swin", "--seq", "1024")
    assert "(fitted)" in out and "(fitted)   (fitted)" not in out


def test_list_prints_whole_first_sentences(capsys):
    _, out, _ = run(capsys, "list")
    summaries = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    biformer = out.split("biformer(")[1].split("\n", 1)[1].split("bigbird(")[0]
    assert " ".join(biformer.split()).endswith("matches its mean query.")
    assert summaries and all(len(line) <= 96 - 4 for line in summaries)


def test_show_picks_a_tile_that_draws_when_queries_outnumber_keys(capsys):
    code, out, err = run(capsys, "show", "stdlib", "causal", "--seq", "20000", "--seq-k", "200")
    assert code == 0 and not err and len(out.splitlines()) <= 512 + 4
