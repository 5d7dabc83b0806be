"""The architecture's rules, checked on the source (docs/ARCHITECTURE.md names each):
Azure behind the backend line, common/topas able to ship alone, no backend chosen by name,
no sys.path tricks, and the README's module list true to the files."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

COMMON = REPO / "common"
SCRIPTS = (REPO / "batch_simulation_runner.py", REPO / "batch_data_reducer.py")


def product_modules() -> list[Path]:
    return sorted(COMMON.rglob("*.py")) + list(SCRIPTS)


def imported(path: Path) -> set[str]:
    """Every module name a file imports (absolute; relative ones resolved in its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_only_the_azure_backend_imports_azure():
    azure_package = COMMON / "backends" / "azure"
    offenders = {relative(p): sorted(n for n in imported(p) if n == "azure" or n.startswith("azure."))
                 for p in product_modules() if azure_package not in p.parents}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_workflow_never_imports_a_concrete_backend():
    backends = COMMON / "backends"
    concrete = ("common.backends.local", "common.backends.azure")
    offenders = {relative(p): sorted(n for n in imported(p) if n.startswith(concrete))
                 for p in product_modules()
                 if backends not in p.parents and p != backends / "__init__.py"}
    assert {k: v for k, v in offenders.items() if v} == {}
    factory = imported(backends / "__init__.py")
    assert "common.backends.local.backend" in factory and "common.backends.azure.backend" in factory


def test_behaviour_is_asked_of_capabilities_not_guessed_from_the_name():
    offenders = [f"{relative(p)}:{n}" for p in product_modules()
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"backend\.name\s*[!=]=", line)]
    assert offenders == []


def test_common_topas_ships_alone():
    """The reducer node gets common/topas and common/errors.py, nothing else of common."""
    allowed = ("common.topas", "common.errors")
    for path in sorted((COMMON / "topas").rglob("*.py")):
        ours = {n for n in imported(path) if n == "common" or n.startswith("common.")}
        assert all(n.startswith(allowed) for n in ours), (relative(path), sorted(ours))
    errors = {n for n in imported(COMMON / "errors.py") if n.startswith("common")}
    assert errors == set()


def test_the_geant4_stager_ships_alone():
    """common/geant4/stage.py runs on the node's own OS as one file: standard library only."""
    ours = {n for n in imported(COMMON / "geant4" / "stage.py") if n.startswith("common")}
    assert ours == set()


def test_the_scripts_load_no_merge_library_before_they_merge():
    """polars' threads would take the SIGINT of a second Ctrl-C at a question: the scripts
    import common.topas (and polars) only where a merge runs in this process."""
    import subprocess
    import sys
    code = ("import sys, common.cli, common.workflow, common.config, common.campaign; "
            "print(sorted(m for m in sys.modules if m.startswith(('polars', 'common.topas'))))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=REPO)
    assert found.stdout.strip() == "[]"


def test_the_package_init_stays_import_free():
    tree = ast.parse((COMMON / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_no_module_edits_sys_path():
    roots = [COMMON, REPO / "tests", REPO / "bench", REPO / "examples"]
    files = [p for root in roots for p in root.rglob("*.py")] + list(SCRIPTS)
    offenders = [relative(p) for p in files if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert offenders == []


# ---------------------------------------------------------------------------- README layout


def layout_entries() -> tuple[set[str], set[str]]:
    """(files, folders) the README's "Layout of the code" names, as paths from the repo."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout of the code"):]
    files, folders, package = set(), set(), ""
    for line in block.splitlines():
        match = re.match(r"^( {4}| {6})(\S+)", line)
        if not match:
            continue
        indent, token = len(match.group(1)), match.group(2).rstrip(",")
        if indent == 4 and token.endswith("/"):
            package = token
            folders.add(token)
        elif indent == 4:
            files.add(token)
            package = ""
        elif indent == 6 and package:
            files.add(package + token)
    return files, folders


def has_code(path: Path) -> bool:
    """Anything but a docstring, imports and __all__: an __init__.py that does more than
    gather its package's names must be listed."""
    def facade(node: ast.stmt) -> bool:
        return (isinstance(node, (ast.Import, ast.ImportFrom))
                or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                or (isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"]))
    return not all(facade(n) for n in ast.parse(path.read_text()).body)


def test_the_readme_names_every_module_and_only_modules_that_exist():
    files, folders = layout_entries()
    assert [f for f in sorted(files | folders) if not (REPO / f).exists()] == []
    modules = {relative(p) for p in COMMON.rglob("*.py")
               if p.name != "__init__.py" or has_code(p)}
    assert sorted(modules - files) == [], "modules the README's layout does not name"
    packages = {relative(p.parent) + "/" for p in COMMON.rglob("__init__.py")}
    assert sorted(packages - folders) == [], "packages the README's layout does not name"
