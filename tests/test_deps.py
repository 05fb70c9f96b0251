"""Each stage's code deps in dvc.yaml are exactly the library modules its script runs: the
import closure inside xinslm/, imports inside functions included (they run when called),
`if TYPE_CHECKING:` blocks left out (they never run). An edit to any module a stage runs
reruns that stage, and an edit to any other does not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from xinslm import export

ROOT = Path(__file__).resolve().parents[1]
# A `foreach` stage (evaluate-task) is checked through its `do` template.
PIPELINE = {
    name: stage.get("do", stage)
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()
}


# Files a module reads rather than imports: export.py copies the modeling code in xinslm/hf/
# into each export folder.
READS = {"xinslm/export.py": {f"xinslm/hf/{name}" for name in export.CODE_FILES}}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the xinslm modules that `path` imports, anywhere in the file."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "xinslm")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xinslm":
            found.add(node.module)
            for alias in node.names:  # `from xinslm import train`: a module
                if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file():
                    found.add(f"{node.module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def module_file(name: str) -> str:
    """xinslm.a.b -> xinslm/a/b.py (a package: its __init__.py)."""
    relative = Path(*name.split("."))
    if (ROOT / relative).is_dir():
        return str(relative / "__init__.py")
    return str(relative.with_suffix(".py"))


def import_closure(script: Path) -> set[str]:
    """The xinslm/ files that running `script` executes (package __init__ files included)."""
    todo, seen = list(imported_modules(script)), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:i])
            if prefix not in seen:
                seen.add(prefix)
                todo.extend(imported_modules(ROOT / module_file(prefix)))
    return {module_file(name) for name in seen}


def stage_script(stage: dict) -> str:
    (script,) = re.findall(r"python (stages/\S+\.py)", stage["cmd"])
    return script


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_code_deps_are_exactly_the_import_closure(name: str) -> None:
    stage = PIPELINE[name]
    script = stage_script(stage)
    declared = {d for d in stage["deps"] if str(d).startswith(("xinslm/", "stages/"))}
    closure = import_closure(ROOT / script)
    read = {f for module in closure for f in READS.get(module, ())}
    expected = {script} | closure | read
    assert sorted(declared - expected) == [], f"{name}: listed in dvc.yaml but never imported"
    assert sorted(expected - declared) == [], f"{name}: imported but missing from dvc.yaml"


def test_the_closure_follows_imports_inside_functions(tmp_path: Path) -> None:
    # xinslm/cli.py imports the checkpoint module inside a function only.
    closure = import_closure(ROOT / "xinslm" / "cli.py")
    assert "xinslm/checkpoint.py" in closure and "xinslm/model.py" in closure
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from xinslm.model import NanoChatModel\n"
        "def f():\n    from xinslm import errors\n"
    )
    assert import_closure(script) == {"xinslm/__init__.py", "xinslm/errors.py"}
