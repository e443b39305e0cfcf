"""Writing a benchmark's record: JSON for machines, markdown for people."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(record: dict, markdown: str, output_dir: Path, name: str) -> None:
    """Write ``name.json`` and ``name.md`` to ``output_dir`` and print the markdown table."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (output_dir / f"{name}.md").write_text(markdown)
    print(markdown, end="")
