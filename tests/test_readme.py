"""README.md tells the truth about the settings: its table has one row per setting, with the setting's default.

And the user documents (README.md, docs/) keep no history: no dates and no issue numbers, which age.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from snapworker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Settings whose default is computed from another (an empty default means "derive it"): what the table says.
DERIVED_DEFAULTS = {
    "api_url": "https://workspace.{REGION}.myhuaweicloud.com",
    "state_dir": "$XDG_STATE_HOME/snapworker",
}

_ROW = re.compile(r"^\| `SNAPWORKER_([A-Z0-9_]+)` \| ([^|]+) \| .+ \|$")


def settings_table() -> dict[str, str]:
    """The rows of README.md's "Settings" section: setting name (lower case) -> its default cell."""
    section = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            name = match[1].lower()
            assert name not in rows, f"SNAPWORKER_{match[1]} has two rows"
            rows[name] = match[2].strip()
    return rows


def documented_default_matches(name: str, field: FieldInfo, cell: str) -> bool:
    """Whether the table's default ``cell`` states ``field``'s default: "unset", or the value in backticks."""
    default = field.default
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if name in DERIVED_DEFAULTS:
        return cell == f"`{DERIVED_DEFAULTS[name]}`"
    if default is None or default == "":
        return cell == "unset"
    if not (cell.startswith("`") and cell.endswith("`")):
        return False
    value = cell.strip("`")
    if isinstance(default, bool):
        return value == str(default).lower()
    if isinstance(default, int | float):
        try:
            return math.isclose(float(value), float(default))
        except ValueError:
            return False
    return value == str(default)


def test_the_table_has_a_row_for_every_setting() -> None:
    rows = settings_table()
    assert [name for name in Settings.model_fields if name not in rows] == []


def test_no_row_names_a_setting_that_does_not_exist() -> None:
    assert [name for name in settings_table() if name not in Settings.model_fields] == []


def test_every_row_gives_the_settings_default() -> None:
    rows = settings_table()
    wrong = {
        f"SNAPWORKER_{name.upper()}": (rows[name], field.default)
        for name, field in Settings.model_fields.items()
        if name in rows and not documented_default_matches(name, field, rows[name])
    }
    assert wrong == {}


def test_a_wrong_default_is_noticed() -> None:
    # the comparison itself can fail: a table that drifted from Settings is caught
    assert not documented_default_matches("linger_ms", Settings.model_fields["linger_ms"], "`200`")
    assert not documented_default_matches("auth_token", Settings.model_fields["auth_token"], "`x`")
    assert not documented_default_matches("track_jobs", Settings.model_fields["track_jobs"], "`false`")
    assert documented_default_matches("track_jobs", Settings.model_fields["track_jobs"], "`true`")


def _user_documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_user_documents_name_no_issue_numbers() -> None:
    pattern = re.compile(r"\b[Ii]ssues? #?\d+|\(#\d+\)")
    found = [f"{doc.name}: {m[0]}" for doc in _user_documents() for m in pattern.finditer(doc.read_text("utf-8"))]
    assert found == []


def test_user_documents_carry_no_dates() -> None:
    # a calendar date ages; a timestamp inside an example message (2026-12-01T02:00:03Z) is a format, not history
    pattern = re.compile(r"\b20\d\d-\d\d-\d\d\b(?!T)")
    found = [f"{doc.name}: {m[0]}" for doc in _user_documents() for m in pattern.finditer(doc.read_text("utf-8"))]
    assert found == []


def test_relative_links_of_the_readme_lead_to_files() -> None:
    text = README.read_text(encoding="utf-8")
    targets = {m[1].split("#", 1)[0] for m in re.finditer(r"\]\(([^)]+)\)", text)}
    local = {t for t in targets if t and not t.startswith(("http://", "https://"))}
    assert sorted(t for t in local if not (ROOT / t).exists()) == []
