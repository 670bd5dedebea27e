"""Rewrite the settings table in docs/configuration.md from the declaration
(kvs/config/declaration.py). Run it after adding or changing a setting:

    .venv/bin/python scripts/config_docs.py

tests/unit/test_config.py fails while the table in the docs differs from the declaration.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import venv_check  # noqa: E402

venv_check.ensure("config_docs.py", "yaml")

from kvs.config import settings_table  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN, END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def with_table(text: str) -> str:
    """`text` with the part between the markers replaced by the generated table."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + BEGIN + settings_table() + END + tail


if __name__ == "__main__":
    DOC.write_text(with_table(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the settings table into {DOC}")
