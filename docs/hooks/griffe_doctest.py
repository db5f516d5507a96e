"""Griffe extension: doctest examples in docstrings rendered as code blocks.

The package's docstrings hold doctests (``>>> recognizer.verify(...)``) in their prose.
Markdown would read ``>>>`` as nested quotes and an output such as ``[True]`` as a link
reference; this wraps each example (its ``>>>`` and ``...`` lines and the output up to the
next blank line) in a ``pycon`` fence before mkdocstrings renders the docstring. The
docstrings themselves are not changed.
"""

from __future__ import annotations

from typing import Any

from griffe import Extension, Module, Object

FENCE = "```"


def fence_doctests(text: str) -> str:
    """``text`` with every doctest example outside a fence wrapped in a ``pycon`` fence."""
    out: list[str] = []
    in_fence = in_example = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if in_example and not stripped:
            out.append(FENCE)
            in_example = False
        elif not in_example and stripped.startswith(FENCE):
            in_fence = not in_fence
        elif not in_fence and not in_example and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}{FENCE}pycon")
            in_example = True
        out.append(line)
    if in_example:
        out.append(FENCE)
    return "\n".join(out)


class DoctestFences(Extension):
    """Fences the doctest examples of every docstring the handler loads."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        # on_object runs for the package's members, not for the package itself
        self.on_object(obj=pkg)
