"""The report as one self-contained HTML page: every figure embedded, so the page needs no other file."""
from __future__ import annotations

import base64
import html
import re
from typing import Callable

import markdown

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def to_html(md: str, read_image: Callable[[str], bytes], title: str = "β-VAE on CIFAR-10: report") -> str:
    """A self-contained HTML page of the markdown report: every linked PNG is embedded as a data: URI
    (`read_image` maps a link as written in the markdown to the file's bytes), so the page needs no other file."""
    body = markdown.markdown(md, extensions=["tables"], output_format="html")

    def embed(m: re.Match) -> str:
        link = html.unescape(m.group(2))
        data = base64.b64encode(read_image(link)).decode("ascii")
        return f'{m.group(1)}"data:image/png;base64,{data}"'

    body = re.sub(r'(<img[^>]*?\ssrc=)"([^"]+\.png)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
