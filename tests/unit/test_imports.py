"""What a node loads at start-up: the libraries only some commands or settings need stay out;
and who may import whom: production code never imports kvs.testing, tests import only `kvs…`
and `tests.support…`.

Start-up time (≤ 1 s) and idle RSS (≤ 60 MB) are benchmark targets that once slipped
unnoticed when the node began importing the HTTP client (httpx), pyjwt (which loads
cryptography) and croniter at start-up; this keeps them out of the import path."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

LAZY = ("httpx", "jwt", "cryptography", "croniter")


def loaded_after(code: str) -> set[str]:
    """The top-level packages loaded by a fresh interpreter running `code`."""
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.partition(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_running_a_node_does_not_import_what_only_some_commands_need() -> None:
    loaded = loaded_after("import kvs.cli, kvs.node, kvs.api")
    assert {"trio", "hypercorn", "quart", "lmdb"} <= loaded  # the check can see imports
    assert not loaded & set(LAZY), f"imported at start-up: {sorted(loaded & set(LAZY))}"


@pytest.mark.parametrize(
    ("code", "needed"),
    [
        (
            "from kvs.auth import tokens; tokens.issue(b'k' * 32, user='u', token_id='t',"
            " now_s=0, expires_in_s=60)",
            "jwt",
        ),  # fmt: skip
        (
            "import datetime as dt; from kvs.backup_service import next_run;"
            " next_run('0 0 * * *', dt.datetime.now(dt.UTC))",
            "croniter",
        ),  # fmt: skip
    ],
)
def test_each_lazy_library_is_loaded_where_it_is_used(code: str, needed: str) -> None:
    assert needed in loaded_after(code)


ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path, package: tuple[str, ...] | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, at any depth (inside functions
    too); `from X import a, b` yields X.a and X.b, since a and b may be modules. Relative
    imports are resolved against the file's package (by default, where it is under ROOT)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def production_modules() -> list[str]:
    """Every module of the package but kvs.testing's (and __main__, which runs the CLI)."""
    names = []
    for path in sorted((ROOT / "kvs").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "testing" in parts or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_production_code_never_imports_the_test_tooling() -> None:
    """kvs.testing (the simulator, doubles, fuzzers, process helpers) may reach into internals
    and hammer ports: no module outside it may import it, at any depth, and loading every
    production module leaves it unloaded."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "kvs").rglob("*.py"))
        if "testing" not in path.relative_to(ROOT / "kvs").parts
        for line, name in imported_modules(path)
        if name == "kvs.testing" or name.startswith("kvs.testing.")
    ]
    assert not offenders, f"production modules importing kvs.testing: {offenders}"
    modules = production_modules()
    assert {"kvs.node", "kvs.cli", "kvs.client", "kvs.net.transport"} <= set(modules)
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'kvs.testing' or m.startswith('kvs.testing.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]", out


def script_modules() -> set[str]:
    """The names scripts/ would put on sys.path: its modules and packages."""
    scripts = ROOT / "scripts"
    return {p.stem for p in scripts.glob("*.py")} | {
        p.name for p in scripts.iterdir() if (p / "__init__.py").exists()
    }


def test_tests_import_only_kvs_and_tests_support() -> None:
    """STYLE 10: a test file (and conftest, and the support modules) imports the project only
    as `kvs…` and `tests.support…`: never another test file, never conftest, never scripts/
    (by name or by path); shared helpers live in tests/support."""
    forbidden_top = {"scripts", "conftest", *script_modules()}
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        where = path.relative_to(ROOT)
        for line, name in imported_modules(path):
            top = name.partition(".")[0]
            if top == "tests" and not (
                name == "tests.support" or name.startswith("tests.support.")
            ):
                offenders.append(f"{where}:{line} imports {name}")
            elif top in forbidden_top:
                offenders.append(f"{where}:{line} imports {name} (not a test helper)")
        text = path.read_text(encoding="utf-8")
        for loader in ("spec_from_file_location", "run_path", "SourceFileLoader"):
            if loader in text and path.name != "test_imports.py":
                offenders.append(f"{where} loads a module by path ({loader})")
    assert not offenders, "\n".join(offenders)


def test_the_import_rules_see_what_they_forbid(tmp_path: Path) -> None:
    """The parser behind both rules catches every form of import it must."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tests.unit.test_store\n"
        "from tests.conftest import make_config\n"
        "from . import test_model\n"
        "def f():\n"
        "    from kvs import testing\n"
        "    import cluster\n",
        encoding="utf-8",
    )
    names = [name for _, name in imported_modules(sample, package=("tests", "unit"))]
    assert names == [
        "tests.unit.test_store",
        "tests.conftest.make_config",
        "tests.unit.test_model",
        "kvs.testing",
        "cluster",
    ]
    assert "cluster" in script_modules()


def test_the_client_package_face_resolves_every_name_on_first_use() -> None:
    """`from kvs.client import X` works for every former name of kvs/client.py, and reading
    the client defaults (as the CLI does at start-up) loads no HTTP client."""
    import kvs.client as face

    assert sorted(face._MODULE_OF) == sorted(face.__all__)
    for name in face.__all__:
        module = importlib.import_module(face._MODULE_OF[name])
        assert getattr(face, name) is getattr(module, name), name
    assert "httpx" not in loaded_after("import kvs.client.env")
