"""Picking a template's tool-call format.

Detection reads marker strings in the template's source: every format lists the substrings
that identify it (``markers``, all required) and a ``priority``; the highest-priority match
wins, and templates with no match get the ``generic`` JSON format. Marker tests were chosen
over rendering-and-diffing because many templates build their call syntax only on paths
that need specific variables (tools with descriptions, string arguments, strftime), so a
render-based probe fails on exactly the templates that need help; the markers are fixed
strings the model was trained to emit, present in the source either way.
"""

from __future__ import annotations

from ggufworker.chat_formats.base import ChatFormat, get_format, registered


def detect_format_name(template: str | None) -> str:
    """The registered name of ``template``'s tool-call format (``"generic"`` if none)."""
    if not template:
        return "generic"
    best: tuple[int, str] | None = None
    for name, cls in registered().items():
        sets = ((cls.markers,) if cls.markers else ()) + cls.alt_markers
        if any(all(m in template for m in ms) for ms in sets):
            if best is None or cls.priority > best[0]:
                best = (cls.priority, name)
    return best[1] if best else "generic"


def detect_format(template: str | None, *, override: str | None = None) -> ChatFormat:
    """The tool-call format for a chat template.

    Args:
        template: the GGUF's chat template source (None: no template).
        override: a format name that wins over detection (the server's
            ``--tool-call-format``).

    Raises:
        KeyError: ``override`` names no registered format.
    """
    return get_format(override or detect_format_name(template))


def has_native_tools(template: str | None) -> bool:
    """The template shows tools to the model and has a native call syntax."""
    return (
        bool(template) and "tools" in (template or "") and detect_format_name(template) != "generic"
    )
