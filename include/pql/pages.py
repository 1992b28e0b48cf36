"""The HTML pages the product writes (weekly report, backtest): one autoescaping Jinja env."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape

TEMPLATES = Environment(loader=PackageLoader("pql", "templates"), autoescape=select_autoescape())
