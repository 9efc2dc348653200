"""A Sphinx directive that shows the current ``--help`` of an argparse command line.

The command-line reference is then generated from the parser itself, so it cannot drift from
the code: ``.. argparse-help:: twitcher.admin.client:build_parser`` shows the main help, and with
``:command: gentoken`` the help of one subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import os
from typing import Dict, List

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

#: Width of the rendered help, wide enough for the option table, narrow enough for the page.
HELP_COLUMNS = 92


def load_parser(spec: str) -> argparse.ArgumentParser:
    """Call the factory named ``module:function`` and return its parser."""
    module_name, _, function = spec.partition(":")
    return getattr(importlib.import_module(module_name), function)()


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name, in the order they were added."""
    # argparse offers no public accessor; this attribute is what every argparse doc tool reads.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_text(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at a fixed width, whatever the terminal of the build is."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        return parser.format_help().rstrip()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


class ArgparseHelp(SphinxDirective):
    required_arguments = 1
    option_spec = {"command": directives.unchanged_required}

    def run(self) -> List[nodes.Node]:
        parser = load_parser(self.arguments[0])
        command = self.options.get("command")
        if command:
            found = subcommands(parser)
            if command not in found:
                raise self.error(f"{parser.prog} has no command {command!r}; it has {', '.join(found)}")
            parser = found[command]
        text = "$ " + parser.prog + " --help\n" + help_text(parser)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("argparse-help", ArgparseHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
