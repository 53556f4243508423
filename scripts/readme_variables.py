"""Rewrite the table of environment variables in docs/configuration.md from the config schema (etl.config.KEYS).

    .venv/bin/python scripts/readme_variables.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/readme_variables.py --check   # exit 1 if it differs
"""

from __future__ import annotations

import sys
from pathlib import Path

from etl.config import variables_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START, END = "<!-- variables:start -->\n", "\n<!-- variables:end -->"


def rewritten(text: str) -> str:
    """The page with the generated table between the markers."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + START + "\n".join(variables_table()) + END + tail


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    new = rewritten(text)
    if "--check" in sys.argv[1:]:
        return 0 if new == text else 1
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
