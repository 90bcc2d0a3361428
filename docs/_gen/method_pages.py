"""One page per registered method: the hand-written paragraph of ``docs/methods/<name>.md``
followed by what the registry knows (family, paper, what a step consumes, its cost, engines, the
options table from its pydantic ``Params``) and the measurement logs that name it.

A registered method without a page, or a page without a method, stops the build: the method
pages cannot drift from the registry. ``methods/SUMMARY.md`` (the navigation) is written here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mtlbench.harness.catalog import MethodEntry, method_catalog
from mtlbench.harness.registry import METHODS
from options_table import options_table

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ROOT / "benchmarks" / "measured"


def measured_files_naming(name: str) -> list[Path]:
    """Measurement logs (text) under benchmarks/measured/ that name the method as a word."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return [
        path
        for path in sorted(MEASURED.rglob("*"))
        if path.suffix in (".txt", ".md")
        and path.name != "README.md"
        and pattern.search(path.read_text(errors="replace"))
    ]


def generated_section(entry: MethodEntry) -> str:
    """The registry's facts about one method, as Markdown."""
    method_cls = METHODS.get(entry.name)
    lines = [
        "",
        "## At a glance",
        "",
        "| | |",
        "| --- | --- |",
        f"| family | {entry.family} |",
        f"| paper | {entry.paper} |",
        f"| a step consumes | {entry.consumes} |",
        f"| cost per step | {entry.cost} |",
        f"| default engine | `{entry.default_engine}` |",
        f"| runs on | {entry.engines} |",
        "",
        f"## Options (`params:` of a `- name: {entry.name}` entry)",
        "",
        options_table(method_cls.Params),
        "## What mtlbench measured",
        "",
    ]
    logs = measured_files_naming(entry.name)
    lines += [
        f"- [`{path.relative_to(MEASURED).as_posix()}`](../measured/"
        f"{path.relative_to(MEASURED).as_posix()})"
        for path in logs
    ] or ["No measurement log names this method yet; see [Benchmarks](../benchmarks.md)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    entries = method_catalog()
    pages = {path.stem for path in (ROOT / "docs" / "methods").glob("[!_]*.md")} - {"index"}
    missing = sorted({entry.name for entry in entries} - pages)
    orphans = sorted(pages - {entry.name for entry in entries})
    if missing or orphans:
        raise SystemExit(
            f"docs/methods/: pages missing for {missing or 'none'}, pages of no method: "
            f"{orphans or 'none'}"
        )
    nav = ["* [All methods](index.md)"]
    for entry in entries:
        with mkdocs_gen_files.open(f"methods/{entry.name}.md", "a") as page:
            page.write(generated_section(entry))
        nav.append(f"* [`{entry.name}`]({entry.name}.md)")
    with mkdocs_gen_files.open("methods/SUMMARY.md", "w") as summary:
        summary.write("\n".join(nav) + "\n")
    with mkdocs_gen_files.open("methods/index.md", "a") as index:
        index.write(method_table(entries))


def method_table(entries: list[MethodEntry]) -> str:
    """The table of every method, for the methods index page."""
    rows = [
        "",
        "| method | family | paper | consumes | cost per step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in entries:
        cells = (
            f"[`{entry.name}`]({entry.name}.md)",
            entry.family,
            entry.paper,
            entry.consumes,
            entry.cost,
        )
        rows.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


main()
