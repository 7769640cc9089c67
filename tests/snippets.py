"""The Python code blocks of README.md and docs/, for the tests that run them.

A block is either written in the Markdown or taken whole from a file of the repository with
pymdownx.snippets' `--8<-- "path"` line; either way it is run as the reader would run it, so a
documented name that changes fails the test that runs its block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(page.relative_to(ROOT)) for page in (ROOT / "docs").rglob("*.md"))]

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"\n?$')


@dataclass(frozen=True)
class Snippet:
    """One Python block: the page it is on, its first line there, and its source."""

    page: str
    line: int
    source: str
    included: str | None = None  # the repository file the block is taken from, if any

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    def run(self, **names: Any) -> dict[str, Any]:
        """Execute the block in a fresh namespace (holding ``names``) and return the namespace.

        Line numbers in a traceback are the page's (or the included file's)."""
        namespace: dict[str, Any] = {"__name__": "docs_snippet", **names}
        if self.included:
            code = compile(self.source, str(ROOT / self.included), "exec")
        else:
            code = compile("\n" * self.line + self.source, str(ROOT / self.page), "exec")
        exec(code, namespace)
        return namespace


def snippets(page: str | None = None) -> list[Snippet]:
    """Every Python block of ``page``, or of every page."""
    found = []
    for name in [page] if page else PAGES:
        text = (ROOT / name).read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(1))
            include = _INCLUDE.match(match.group(1))
            if include:
                found.append(Snippet(name, line, (ROOT / include[1]).read_text(), include[1]))
            else:
                found.append(Snippet(name, line, match.group(1)))
    return found


def snippet(page: str, marker: str) -> Snippet:
    """The one Python block of ``page`` that contains ``marker``."""
    matching = [block for block in snippets(page) if marker in block.source]
    assert len(matching) == 1, f"{len(matching)} Python blocks of {page} contain {marker!r}"
    return matching[0]
