"""The options tables of the engines page: each ``<!-- engine-options: NAME -->`` marker of
``docs/engines/index.md`` becomes the table of that engine's ``options_model`` (the pydantic model a
suite's ``engine_options`` are validated against at load). An engine known to
``engine_names()`` without a marker, or a marker naming no engine, stops the build.

An engine class that declares no ``options_model`` yet gets a table of its constructor's
keyword parameters instead (name and default), so the page still says what it accepts.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mtlbench.harness.gradients import engine_names, get_engine
from options_table import options_table

MARKER = re.compile(r"<!-- engine-options: (\w+) -->")
PAGE = "engines/index.md"


def keyword_table(factory: object) -> str:
    """Name and default of each keyword parameter after the four positional ones."""
    parameters = list(inspect.signature(factory).parameters.values())[4:]  # type: ignore[arg-type]
    rows = ["| option | default |", "| --- | --- |"]
    rows += [
        f"| `{p.name}` | `{p.default!r}` |"
        for p in parameters
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    return "\n".join(rows) + "\n" if len(rows) > 2 else "No options.\n"


def engine_table(name: str) -> str:
    factory = get_engine(name)
    model = getattr(factory, "options_model", None)
    return options_table(model) if model is not None else keyword_table(factory)


def main() -> None:
    source = (Path(__file__).resolve().parents[1] / PAGE).read_text()
    named = MARKER.findall(source)
    known = engine_names()
    undocumented = sorted(set(known) - set(named))
    unknown = sorted(set(named) - set(known))
    if undocumented or unknown:
        raise SystemExit(
            f"docs/{PAGE}: no options marker for engines {undocumented or 'none'}; "
            f"markers of unknown engines {unknown or 'none'}"
        )
    with mkdocs_gen_files.open(PAGE, "w") as page:
        page.write(MARKER.sub(lambda match: engine_table(match.group(1)), source))


main()
