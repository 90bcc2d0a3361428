"""The measurement logs of ``benchmarks/measured/`` (each with the command that produced it at
its top) copied into the site under ``measured/``, so that pages link to them and a link to a log
that was moved or deleted fails the strict build. Each folder's ``README.md`` becomes its index
page; ``measured/index.md`` lists every folder and file."""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

MEASURED = Path(__file__).resolve().parents[2] / "benchmarks" / "measured"


def first_line(path: Path) -> str:
    """The first non-empty line of a text log, without its Markdown heading marks."""
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip().replace("|", "\\|")
    return ""


def main() -> None:
    index = [
        "# Measurement logs",
        "",
        "Every number the docs quote comes from one of these files (`benchmarks/measured/` in "
        "the repository); each starts with the command that produced it, or its folder's "
        "README names the commands.",
        "",
    ]
    nav = ["* [All logs](index.md)"]
    for folder in sorted(path for path in MEASURED.iterdir() if path.is_dir()):
        index += [f"## [`{folder.name}`]({folder.name}/index.md)", ""]
        nav += [f"* {folder.name}", f"    * [Overview]({folder.name}/index.md)"]
        if not (folder / "README.md").is_file():  # a folder being filled: a plain listing
            with mkdocs_gen_files.open(f"measured/{folder.name}/index.md", "w") as listing:
                listing.write(f"# `{folder.name}`\n\nLogs of this folder, listed below.\n")
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(MEASURED).as_posix()
            target = f"measured/{relative}"
            if path.name == "README.md":
                target = f"measured/{folder.name}/index.md"
            with mkdocs_gen_files.open(target, "wb") as copy:
                copy.write(path.read_bytes())
            if path.suffix == ".md" and path.name != "README.md":
                nav.append(f"    * [{path.stem}]({relative})")
            if path.name != "README.md":
                described = first_line(path) if path.suffix in (".txt", ".md") else path.suffix
                index.append(f"- [`{path.name}`]({relative}): {described}")
        index.append("")
    with mkdocs_gen_files.open("measured/index.md", "w") as page:
        page.write("\n".join(index))
    with mkdocs_gen_files.open("measured/SUMMARY.md", "w") as summary:
        summary.write("\n".join(nav) + "\n")


main()
