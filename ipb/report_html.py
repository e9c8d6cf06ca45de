"""The report's Markdown as one self-contained HTML page, its figures embedded.

    python -c "from ipb.report_html import write_html; write_html('report/report.md')"

Why: MLflow's artifact view shows a .md as plain text, so `![](tpr_per_class.png)` read as
that text and no figure appeared; an .html artifact it renders in a frame, and figures inlined
as data: URIs need no second request (the frame cannot resolve a relative path). Only the
Markdown our reports write: headings, pipe tables, figures, "- " lists, `code`, **bold**,
paragraphs. No Ray, no MLflow.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_STYLE = ("body{font-family:sans-serif;max-width:72em;margin:1em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
          "padding:2px 6px;text-align:left}img{max-width:100%}code{background:#f3f3f3}")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _figure(alt: str, src: str, base: Path) -> str:
    f = base / src
    if not f.is_file():
        return f"<p>(figure {html.escape(src)} missing)</p>"
    data = base64.b64encode(f.read_bytes()).decode()
    kind = "png" if f.suffix.lower() == ".png" else f.suffix.lower().lstrip(".")
    return f'<p><img alt="{html.escape(alt or src)}" src="data:image/{kind};base64,{data}"></p>'


def markdown_html(text: str, base: Path) -> str:
    """`text` (our reports' Markdown) as an HTML page; figures read from `base` and inlined."""
    lines, body, i = text.splitlines(), [], 0
    title = next((ln.lstrip("# ") for ln in lines if ln.startswith("# ")), "report")
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= {"-", ":"}
                                                                   for c in r)]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>"
                                                             for c in r) + "</tr>"
                                            for r in rest) + "</table>")
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        m = _IMAGE.match(line.strip())
        if m:
            body.append(_figure(m.group(1), m.group(2), base))
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_inline(title)}</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_html(md_file: str | Path) -> Path:
    """Write <name>.html beside a report's <name>.md; returns its path."""
    md_file = Path(md_file)
    out = md_file.with_suffix(".html")
    out.write_text(markdown_html(md_file.read_text(), md_file.parent))
    return out


__all__ = ["markdown_html", "write_html"]
