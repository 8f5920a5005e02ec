"""One row of ``snapworker check``: a status and a plain message about one area."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Finding", "Level"]

#: ``ok``; ``WARN``: worth knowing, not a fault; ``FAIL``: ``run`` would not work (check exits 1).
Level = Literal["ok", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    area: str
    text: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.area:<8}  {self.text}"
