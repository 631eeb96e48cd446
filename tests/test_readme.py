"""The README's Python example runs as written, and the docs it points to stay in step with the code."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DESIGN = ROOT / "docs" / "design.md"
PACKAGE = ROOT / "src" / "einsearch"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("\n\n", 2)[1]
    assert "make demo" in head and "make test" in head


def _modules(folder: Path) -> set[str]:
    """Module files (``x.py``) and subpackages (``x/``) of ``folder``, as the layout table writes them."""
    names = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    names |= {p.name + "/" for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return names - {"search/", "presets/"}


def test_readme_layout_table_lists_every_module():
    layout = README.read_text().split("## Layout", 1)[1]
    cited = set(re.findall(r"`([\w/]+(?:\.py|/))`", layout))
    for folder in (PACKAGE, PACKAGE / "search"):
        missing = sorted(_modules(folder) - cited)
        assert not missing, f"README layout table lacks {missing} (from {folder.relative_to(ROOT)})"


def test_cited_design_sections_exist():
    headings = set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(), flags=re.M))
    assert headings >= {str(n) for n in range(1, 11)}
    for path in [README, *ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        for section in re.findall(r"docs/design\.md,? sections? (\d+)", path.read_text()):
            assert section in headings, f"{path.relative_to(ROOT)} cites docs/design.md section {section}"


def test_no_citation_of_a_design_file_outside_the_repository():
    for path in [README, *ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        assert "DESIGN" + ".md" not in path.read_text(), f"{path.relative_to(ROOT)} cites the outside design file"


def test_readme_task_example_is_the_tested_task_module():
    code = (ROOT / "tests" / "search" / "data" / "user_task" / "sine_task.py").read_text()
    assert f"```python\n{code}```" in README.read_text()
