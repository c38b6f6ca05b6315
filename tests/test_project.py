"""The project's own promises: the README's commands and CI agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands():
    assert len(quick_start_commands()) == 2


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_quick_start_never_installs_an_unpinned_torch():
    for command in quick_start_commands():
        assert "torch==2.13.0" in command


def test_every_installed_package_lives_under_attnlang():
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"] and all(p == "attnlang" or p.startswith("attnlang.") for p in config["packages"])
    for package, folder in config["package-dir"].items():
        assert package.startswith("attnlang.") and (ROOT / folder).is_dir()


def test_code_generation_imports_as_attnlang_codegen():
    import attnlang.codegen.runtime
    assert attnlang.codegen.runtime.__name__ == "attnlang.codegen.runtime"
    sources = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and p != Path(__file__).resolve()]
    stale = [str(p.relative_to(ROOT)) for p in sources
             if re.search(r"^\s*(from|import) codegen\b|-m codegen\b", p.read_text(), re.M)]
    assert not stale, f"import codegen as attnlang.codegen: {stale}"


def test_requires_python_matches_the_code():
    import tomllib
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"  # tomllib and enum.StrEnum are 3.11+
