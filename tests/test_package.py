"""The package's public face: an honest __all__, the schema files, the sans-I/O core, the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import snapworker
from snapworker.contract.schemas import SCHEMA_FILES, render_schemas

ROOT = Path(__file__).resolve().parent.parent


def _isort_key(name: str) -> tuple[int, str]:
    # constants, then classes, then functions and dunders: the order ruff's RUF022 keeps
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_all_is_sorted_and_every_name_exists() -> None:
    assert list(snapworker.__all__) == sorted(snapworker.__all__, key=_isort_key)
    for name in snapworker.__all__:
        assert hasattr(snapworker, name), name


def test_every_public_name_in_the_package_namespace_is_in_all() -> None:
    public = {n for n in vars(snapworker) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(snapworker, n)).__name__ == "module"}
    assert public - modules - {"version", "PackageNotFoundError"} == set(snapworker.__all__) - {"__version__"}


def test_every_exception_of_the_tree_is_public() -> None:
    from snapworker import errors

    assert set(errors.__all__) <= set(snapworker.__all__)


def test_version_comes_from_package_metadata() -> None:
    from importlib.metadata import version

    assert snapworker.__version__ == version("snapworker")


def test_schema_files_match_the_models() -> None:
    """Fails when schemas/ drifts from models.py: run `snapworker schema --out schemas/`."""
    for name, text in render_schemas().items():
        assert (ROOT / "schemas" / name).read_text(encoding="utf-8") == text, name
    assert {p.name for p in (ROOT / "schemas").glob("*.schema.json")} == set(SCHEMA_FILES)


def test_the_batching_core_does_no_io() -> None:
    forbidden = {
        "asyncio",
        "aio_pika",
        "aiormq",
        "aiohttp",
        "time",
        "socket",
        "threading",
        "random",
        "snapworker.cloud",
        "snapworker.settings",
    }
    for path in (ROOT / "snapworker" / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name}: {name}"
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "snapworker" / "core").glob("*.py"))
    assert "datetime.now" not in source
    assert "utcnow" not in source


def test_python_dash_m_runs_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "snapworker", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"snapworker {snapworker.__version__}"


def test_schema_command_writes_the_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "snapworker", "schema", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMA_FILES)


def test_readme_documents_every_setting() -> None:
    from snapworker.settings import Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"SNAPWORKER_{n.upper()}" not in readme]
    assert missing == []


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash .ci/test" in readme
    assert "bash .ci/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
