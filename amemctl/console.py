"""The rich consoles amemctl prints on, and its text in them.

What amemctl prints is mostly the user's text: paths, `--set` overrides, sweep values, error
messages, a plugin's documentation. rich would read `[dot, cosine]` in it as a markup tag
(and drop it), `[/x]` as a stray closing tag (and raise), and `:x:` as an emoji code. So every
console is made without emoji codes (`console`), and text put into markup, a table cell or a
tree is escaped first (`plain`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape


def console(**options: Any) -> Console:
    """A rich Console that prints `:name:` as written, not as an emoji."""
    return Console(emoji=False, **options)


def plain(text: object) -> str:
    """`text` as rich markup that prints it as it is: a table cell, a tree label, a line with markup of amemctl's own."""
    return escape(str(text))
