"""Sphinx configuration: API pages from the docstrings (napoleon, MathJax)."""

from __future__ import annotations

import bayesdrop

project = "bayesdrop"
author = "bayesdrop developers"
release = bayesdrop.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",  # ".. doctest::" blocks in the guide (run by pytest as well)
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
# MathJax is loaded by the browser when the pages are read; building needs no network.
