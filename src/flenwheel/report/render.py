"""Jinja2 for the HTML reports: the templates ship in report/templates/, and autoescape is on, so every value
a user or an engine chose (names, file names, prompts, captions, errors) is escaped; only markup flenwheel
built itself (`Markup`, e.g. a rendered section) goes in as it is."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment
    from markupsafe import Markup


@cache
def environment() -> Environment:
    """One environment per process (templates are compiled once); imported lazily, off `flenwheel --help`."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("flenwheel.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt name is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> Markup:
    """The template rendered with `context`, as markup that another template may embed unescaped."""
    from markupsafe import Markup

    return Markup(environment().get_template(template).render(**context))
