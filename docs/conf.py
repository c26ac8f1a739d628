"""Sphinx configuration of the losslab site (``make docs``: ``docs/_build/html``).

The build needs no network: no intersphinx, and MathJax 3 is served from the site's own
``_static/mathjax`` (the ``sphinx-mathjax-offline`` wheel bundles MathJax's release files).
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import losslab  # noqa: E402

project = "losslab"
author = "the losslab authors"
copyright = "the losslab authors"
release = version = losslab.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # copies MathJax 3 into _static/mathjax and points mathjax_path there
    "myst_parser",
    "losslab_docs",  # generates families/*.rst, experiments.md and benchmarks.md
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
templates_path = []

# Google-style docstrings with Sphinx roles and ``.. math::`` blocks.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Shape", "notes_style"), ("References", "notes_style")]
autodoc_typehints = "signature"
# The Literal aliases of the signatures, documented on the API page.
autodoc_type_aliases = {
    "Reduction": "losslab._reduction.Reduction",
    "Distance": "losslab.functional.metric.Distance",
    "Average": "losslab.functional.metric.Average",
    "ICNNDistance": "losslab.functional.metric_fewshot.ICNNDistance",
}
autodoc_member_order = "bysource"
add_module_names = False

myst_heading_anchors = 3

# Nitpicky: every cross-reference must resolve. Without intersphinx (no network), names of
# torch and typing cannot resolve, and only those are ignored.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|typing|typing_extensions)(\..*)?"),
    (r"py:.*", r"collections\.abc\..*"),  # typing's Callable, Sequence, ... in annotations
]

html_theme = "alabaster"
html_title = f"losslab {release}"
html_static_path = []
html_theme_options = {
    "description": "Training objectives from recent research, for PyTorch",
    "fixed_sidebar": False,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_show_sourcelink = False
