"""MkDocs hook: generate the CLI reference from the live typer app, so it can never drift from the code."""

from __future__ import annotations

from mkdocs.structure.files import File

INTRO = """# CLI reference

Generated from the command line itself when the docs are built, with the sub-commands of every plugin installed
in the docs environment. `omnimm COMMAND --help` prints the same text.

"""


def on_files(files, config):
    import typer
    from typer.cli import get_docs_for_click

    from omnimm.cli import get_app

    command = typer.main.get_command(get_app())
    reference = get_docs_for_click(obj=command, ctx=typer.Context(command), name="omnimm")
    # Demote headings one level: the page title above is the only h1.
    reference = "\n".join("#" + line if line.startswith("#") else line for line in reference.splitlines())
    files.append(File.generated(config, "cli.md", content=INTRO + reference + "\n"))
    return files
