"""Sphinx configuration of the Twitcher documentation (built offline by ``make docs``)."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# autodoc imports the package from this checkout, installed or not; _ext holds our own extension.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))

from twitcher import __version__  # noqa: E402

project = "Twitcher"
author = "the Twitcher developers"
copyright = "the Twitcher developers, Apache License 2.0"  # noqa: A001
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "clihelp",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {"description": "A security proxy for OGC Web Services", "fixed_sidebar": True}

# Broken cross-references to third-party types (pyramid's Request, ...) are not ours to fix,
# and linking them would need intersphinx, which needs the network.
nitpicky = False

# "generate_token(...)", not "twitcher.admin.rpcinterface.generate_token(...)": XML-RPC callers know
# methods by their bare names, and every page says which module it documents.
add_module_names = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

#: Pages that other engineers draft for their own component. Each is added to the index
#: (under "Components") as soon as its file exists, so that a draft never breaks the build by
#: being in no toctree, and a missing one never breaks it by being listed.
COMPONENT_PAGES = ("wps", "store", "benchmark", "federation")


def _add_component_pages(app, docname, source):
    if docname != root_doc:
        return
    present = [name for name in COMPONENT_PAGES if (HERE / f"{name}.rst").exists()]
    if present:
        entries = "".join(f"   {name}\n" for name in present)
        source[0] += f"\n\n.. toctree::\n   :maxdepth: 2\n   :caption: Components\n\n{entries}"


def setup(app):
    app.connect("source-read", _add_component_pages)
