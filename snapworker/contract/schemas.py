"""JSON Schema documents of the wire contract, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from snapworker.contract.models import SnapshotCompletion, SnapshotRequest, SnapshotResult

__all__ = ["SCHEMA_FILES", "render_schemas", "write_schemas"]

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "snapshot-request.schema.json": SnapshotRequest,
    "snapshot-result.schema.json": SnapshotResult,
    "snapshot-completion.schema.json": SnapshotCompletion,
}
_BASE_ID = "https://snapworker.invalid/schemas/"


def render_schemas() -> dict[str, str]:
    """File name -> schema text, exactly as ``write_schemas`` writes it."""
    rendered = {}
    for name, model in SCHEMA_FILES.items():
        # A request is validated as it arrives, a result is read as it was written.
        mode: JsonSchemaMode = "validation" if model is SnapshotRequest else "serialization"
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": _BASE_ID + name,
            **model.model_json_schema(mode=mode),
        }
        rendered[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
