"""``losslab list`` and ``losslab info``: the registry as text and Markdown."""
from __future__ import annotations

import inspect

import losslab
from losslab.registry import LossInfo


def _module_name(info: LossInfo) -> str:
    return f"`nn.{info.module.__name__}`" if info.module is not None else "—"


def markdown_table(names: list[str]) -> str:
    """The README catalog table (generated, never written by hand)."""
    lines = [
        "| name | family | module | what | paper |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        info = losslab.info(name)
        ref = info.reference
        summary = info.summary.replace("|", "\\|")
        lines.append(
            f"| `{name}` | {info.family} | {_module_name(info)} | {summary} | "
            f"[{ref.title.replace('|', '/')}]({ref.url}) ({ref.year}) |"
        )
    return "\n".join(lines)


def plain_table(names: list[str]) -> str:
    if not names:
        return "(no objective matches)"
    width = max(len(n) for n in names)
    fam = max(len(losslab.info(n).family) for n in names)
    return "\n".join(f"{n:<{width}}  {losslab.info(n).family:<{fam}}  {losslab.info(n).summary}" for n in names)


def describe(name: str) -> str:
    info = losslab.info(name)
    sig = inspect.signature(info.function)
    props = ", ".join(f"{k}={v}" for k, v in sorted(info.properties.items())) or "—"
    parts = [
        f"{info.name}  ({info.family})",
        "",
        f"losslab.{'estimators' if info.family == 'estimators' else 'functional'}.{info.name}{sig}",
        f"module:     {', '.join('losslab.nn.' + m.__name__ for m in info.modules) or '—'}",
        f"tags:       {', '.join(info.tags) or '—'}",
        f"reference:  {info.reference}",
        f"seed paper: {info.seed or '—'}",
        f"properties: {props}",
        "",
        inspect.getdoc(info.function) or "",
    ]
    return "\n".join(parts)
