"""MkDocs hook: the Python API reference lists exactly what ``facerec`` exports.

A page writes ``<!-- api: facerec -->`` on a line of its own; the build replaces it with a
mkdocstrings block for the module whose ``members`` are its ``__all__``, read from the
module itself (``import facerec`` is light: the API's modules load when mkdocstrings reads
them, statically). A name added to ``__all__`` appears in the reference without an edit
here.
"""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!-- api: ([a-z_.]+) -->$", re.MULTILINE)


def block(module_name: str) -> str:
    """The mkdocstrings block for ``module_name``'s ``__all__``."""
    try:
        names = list(import_module(module_name).__all__)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"API reference: cannot read {module_name}.__all__: {exc}") from exc
    members = "".join(f"        - {name}\n" for name in names)
    return f"::: {module_name}\n    options:\n      members:\n{members}"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: block(m.group(1)), markdown)
