"""
Sphinx configuration of the sb3-mpo documentation.

Build it from the repository root with warnings as errors (``pip install -e ".[docs]"`` first)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The guide and the result pages stay Markdown (read through myst-parser); the algorithm page and the index are reST, in
the form of sb3-contrib's algorithm pages, with the API generated from the docstrings by autodoc.
"""

import os
import sys

# The repository root, so that autodoc imports this checkout's sb3_mpo even when it is not installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sb3_mpo.version import __version__

# -- Project information -----------------------------------------------------

project = "sb3-mpo"
author = "sb3-mpo maintainers"
copyright = "sb3-mpo maintainers"
version = __version__
release = __version__

# -- General configuration ---------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
language = "en"

# _build: the output; README*.md: fragments for GitHub's folder view, if any, are not pages of the site;
# results/tiny.md: the page of the `tiny` smoke suite, when someone has run it (its numbers mean nothing)
exclude_patterns = ["_build", "**/_build", "Thumbs.db", ".DS_Store", "**/README*.md", "results/tiny.md"]

pygments_style = "sphinx"

# -- Markdown (myst-parser) --------------------------------------------------

# Anchors for headings down to ###, so that links such as algorithm.md#discrete-actions-categorical-mpo resolve
myst_heading_anchors = 3
# $...$ maths and the :::{note} blocks, if a page uses them
myst_enable_extensions = ["dollarmath", "colon_fence"]

# -- autodoc -----------------------------------------------------------------

autodoc_member_order = "bysource"
# The type hints are in the signatures; the :param: lines of the docstrings carry the meaning
autodoc_typehints = "signature"
# Defaults as written in the source (nn.ReLU, not <class 'torch.nn...ReLU'>), which keeps the signatures parseable
autodoc_preserve_defaults = True
autosummary_generate = False

# -- HTML output -------------------------------------------------------------

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-mpo {__version__}"
html_show_sourcelink = False
html_context = {
    "display_github": True,
    "github_user": "sb3-mpo",
    "github_repo": "sb3-mpo",
    "github_version": "main",
    "conf_py_path": "/docs/",
}
