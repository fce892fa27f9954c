"""Sphinx configuration: API pages from the docstrings (napoleon), formulas rendered offline.

The build is nitpicky (``make docs`` runs ``sphinx -n -W``): every cross-reference to a bayesdrop
object must resolve. Names of other projects (PyTorch, NumPy, SciPy, matplotlib, the standard
library, typing constructs) cannot resolve, because intersphinx would download those projects'
inventories and the build runs offline; they are listed in ``nitpick_ignore_regex`` below, and
only they are.
"""

from __future__ import annotations

from typing import Any

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
    # MathJax 3 (with its fonts) copied into _static/mathjax: formulas render with no network.
    "sphinx-mathjax-offline",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"

nitpicky = True
# External names only (see the module docstring): bayesdrop's own names always resolve.
_EXTERNAL = (
    r"torch(\..+)?",
    r"(nn|F)\..+",  # torch.nn / torch.nn.functional as written in signatures and docstrings
    r"Tensor|Module|Figure|Path",  # torch.Tensor, torch.nn.Module, matplotlib's Figure, pathlib
    r"(numpy|np|scipy|matplotlib)\..+",
    r"(os|pathlib|collections\.abc|typing|argparse|time|zipfile)(\..+)?",
)
nitpick_ignore_regex = [
    (role, name) for role in ("py:class", "py:func", "py:meth", "py:mod", "py:data", "py:exc")
    for name in _EXTERNAL
]  # fmt: skip


def _viewcode_back_anchors(app: Any, doctree: Any) -> None:
    """Give each documented object the anchor its source page's ``[docs]`` link points at.

    ``sphinx.ext.viewcode`` builds the back-link of every object of a source module from the
    module name under which it first met *any* object of that module (sphinx-doc/sphinx#6651):
    ``bayesdrop.convert`` is documented as ``bayesdrop.convert`` while the rest of
    ``bayesdrop.conversion`` is documented under that name, so the source page of
    ``bayesdrop.conversion`` links ``#bayesdrop.ChannelDropout``. The anchor is added to the
    object's signature (it runs after viewcode's handler, which records the module name).
    """
    from sphinx import addnodes
    from sphinx.ext.viewcode import _get_full_modname

    modules = getattr(app.env, "_viewcode_modules", {})
    for signode in doctree.findall(addnodes.desc_signature):
        modname, fullname = signode.get("module"), signode.get("fullname")
        if not modname or not fullname:
            continue
        entry = modules.get(_get_full_modname(modname, fullname) or modname)
        if not entry or fullname not in entry[1]:
            continue
        anchor = f"{entry[3]}.{fullname}"
        if anchor not in signode["ids"]:
            signode["ids"].append(anchor)


def _class_parameter_types(
    app: Any, what: str, name: str, obj: Any, options: Any, args: Any, retann: Any
) -> None:
    """Record a class's parameter types from its ``__init__``, with the annotations evaluated.

    autodoc evaluates the string annotations (``from __future__ import annotations``) of a
    class's signature with ``typing.get_type_hints(cls)``, which reads the class attributes, not
    ``__init__``: the parameters would show ``nn.Module`` and ``NoiseType`` as written instead
    of ``torch.nn.Module`` and ``Literal['A', 'B']``. Runs after autodoc's own recorder.
    """
    import inspect as pyinspect

    from sphinx.util.inspect import signature
    from sphinx.util.typing import stringify_annotation

    init = getattr(obj, "__init__", None) if what in ("class", "exception") else None
    if not pyinspect.isfunction(init):
        return
    try:
        sig = signature(init, bound_method=True, type_aliases=app.config.autodoc_type_aliases)
    except (TypeError, ValueError):
        return
    mode = "smart" if app.config.autodoc_typehints_format == "short" else "fully-qualified"
    recorded = app.env.current_document.autodoc_annotations.setdefault(name, {})
    for param in sig.parameters.values():
        if param.annotation is not param.empty:
            recorded[param.name] = stringify_annotation(param.annotation, mode)


def setup(app: Any) -> None:
    app.connect("doctree-read", _viewcode_back_anchors, priority=600)
    app.connect("autodoc-process-signature", _class_parameter_types, priority=600)
