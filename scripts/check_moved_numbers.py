#!/usr/bin/env python
"""Check that moving text out of the README lost no number: every number of an old README appears in the README and
docs/ at least as often as before.

Usage (e.g. after moving the README's sections of another branch into docs/):

    git show main:README.md > /tmp/old_readme.md
    python scripts/check_moved_numbers.py /tmp/old_readme.md

Exit code 1, listing each number and its counts, when a number is missing or appears fewer times than before.
"""

import argparse
import collections
import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
# A number: optional sign, digits with thousands separators, decimals, exponent; not part of a word or a version.
NUMBER = re.compile(r"(?<![\w.])[−+-]?\d[\d,]*(?:\.\d+)?(?:e[−+-]?\d+)?(?!\w)")


def numbers(text: str) -> collections.Counter:
    """How often each number occurs in `text` (the typographic minus counts as `-`)."""
    return collections.Counter(match.replace("−", "-").rstrip(",") for match in NUMBER.findall(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_readme", type=Path, help="The README before the move.")
    parser.add_argument(
        "--pages", nargs="*", type=Path, help="Where the numbers must be now (default: README.md and docs/*.md)."
    )
    args = parser.parse_args(argv)
    pages = args.pages or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    old = numbers(args.old_readme.read_text(encoding="utf-8"))
    new = numbers("\n".join(page.read_text(encoding="utf-8") for page in pages))
    lost = {number: (count, new[number]) for number, count in old.items() if new[number] < count}
    print(f"{len(old)} distinct numbers, {sum(old.values())} occurrences in {args.old_readme}")
    for number, (before, now) in sorted(lost.items()):
        print(f"  {number}: {before} before, {now} now")
    print("no number lost" if not lost else f"{len(lost)} numbers lost or fewer")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
