"""One exception family for embedrl.

Every message names where the problem is (file, line or record id, field) so that a user can fix the input
without reading our source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class EmbedRLError(Exception):
    """Base class of every error embedrl raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One defect found in an input file: where it is and what is wrong."""

    file: str
    message: str
    line: int | None = None
    field: str | None = None
    record: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where]
        if self.record is not None:
            parts.append(f"record {self.record!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + f": {self.message}"


class DataError(EmbedRLError):
    """Invalid input data. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(file="<input>", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        head = str(self.problems[0]) if self.problems else "invalid data"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(head + more)

    def report(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class MediaError(EmbedRLError):
    """An image or video that cannot be read, is corrupt, or breaks a safety limit."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class ConfigError(EmbedRLError):
    """A configuration value or combination that cannot work."""


class ModelError(EmbedRLError):
    """A checkpoint that cannot be loaded or used the way it was asked to be."""


class BackendError(EmbedRLError):
    """A generation or embedding backend (local or remote) failed."""
