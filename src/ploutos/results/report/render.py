"""The report's sections as markdown (``summary.md``, beside the PNGs it links) and as one
self-contained HTML file (``report.html``: images embedded as base64 data URIs, CSS inline, no link to
anything outside the file, so it can be mailed or archived alone)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

from ploutos.results.report.document import Bullets, Code, Image, Paragraph, Section
from ploutos.results.report.tables import Table

_CODE = re.compile(r"`([^`]+)`")
CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1em 2em 4em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
nav { font-size: 0.9em; margin: 1em 0; }
nav a { margin-right: 1.1em; color: #1f5fa8; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 0.25em 0.55em; }
th { background: #f2f2f4; }
td.r, th.r { text-align: right; } td.l, th.l { text-align: left; }
img { max-width: 100%; display: block; margin: 0.8em 0; }
pre { background: #f6f6f8; padding: 0.8em; font-size: 0.8em; overflow-x: auto; max-height: 30em; }
code { background: #f2f2f4; padding: 0 0.2em; }
.meta { color: #555; }
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in table.columns) + " |"]
    lines.append("|" + "".join(" ---: |" if a == "r" else " --- |" for a in table.align))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def to_markdown(title: str, header: str, sections: list[Section]) -> str:
    """``summary.md``: the sections in order, images linked by file name."""
    lines = [f"# {title}", "", header]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for block in section.blocks:
            lines.append("")
            if isinstance(block, Paragraph):
                lines.append(block.text)
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            elif isinstance(block, Table):
                lines += markdown_table(block)
            elif isinstance(block, Image):
                lines.append(f"![{block.alt}]({block.file})")
            elif isinstance(block, Code):
                lines += [f"```{block.language}", block.text, "```"]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _shade(value: float | None, scale: float) -> str:
    """A background from red (losses) through white to green (gains), by size against the table's largest."""
    if value is None or scale <= 0:
        return ""
    alpha = min(abs(value) / scale, 1.0) * 0.6
    rgb = "46, 160, 67" if value > 0 else "215, 58, 73"
    return f' style="background: rgba({rgb}, {alpha:.2f})"'


def html_table(table: Table) -> str:
    head = "".join(f'<th class="{a}">{html.escape(c)}</th>' for c, a in zip(table.columns, table.align, strict=True))
    shades = table.shade or [(None,) * len(table.columns)] * len(table.rows)
    scale = max((abs(v) for row in shades for v in row if v is not None), default=0.0)
    body = []
    for row, shade in zip(table.rows, shades, strict=True):
        cells = "".join(f'<td class="{a}"{_shade(v, scale)}>{html.escape(c)}</td>'
                        for c, a, v in zip(row, table.align, shade, strict=True))  # fmt: skip
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(title: str, header: str, sections: list[Section], images: Mapping[str, bytes]) -> str:
    """``report.html``: one file with every section, table and figure (``images``: PNG bytes by file name)."""
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{_inline(header)}</p>', f"<nav>{nav}</nav>",
    ]  # fmt: skip
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Image):
                data = base64.b64encode(images[block.file]).decode("ascii")
                parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}" '
                             f'title="{html.escape(block.file)}">')  # fmt: skip
            elif isinstance(block, Code):
                parts.append(f"<details><summary>config.yaml</summary><pre>{html.escape(block.text)}</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
