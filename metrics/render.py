"""The Jinja2 templates in metrics/templates/ that turn the report's and the tables' data into
HTML and Markdown: one environment, autoescaped for `*.html.j2` only, so a model or clip name
holding markup is shown as text in the page and left as written in the Markdown.
"""
from __future__ import annotations

import base64
import functools
import io

import jinja2
import numpy as np


def png_data_uri(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a `data:` URI, so the page needs no file beside it."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def md_cell(value) -> str:
    """A Markdown table cell: a `|` would end the cell early."""
    return str(value).replace("|", "\\|")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("metrics", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined)  # a misspelt field fails instead of printing nothing
    env.filters.update(png_data_uri=png_data_uri, md_cell=md_cell)
    env.globals["zip"] = zip
    return env


def render(template: str, **context) -> str:
    """`template` (a file name in metrics/templates/) filled with `context`."""
    return environment().get_template(template).render(**context)
