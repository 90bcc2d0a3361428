"""The API reference: one page per public module of the four packages, found by walking the
source folders at build time (so a module split or renamed by anyone appears without editing a
list), each page a mkdocstrings directive read from ``build/pkgroot``.

Public means no path component starts with ``_``. ``.ci/pkgroot`` makes ``build/pkgroot`` (the
folders under their import names, which griffe cannot find through the editable install); it is
run here so that ``mkdocs build`` works from a clean clone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "methods", "datasets", "cluster")
INDEX = """# API reference

Generated from the docstrings of every public module (no leading underscore) of the four
packages, found in the source tree when the site is built:

- [`mtlbench.harness`](harness/index.md): suites, registry, trainer, budget, gradient engines,
  metrics, records, tracking, leaderboard, CLI;
- [`mtlbench.methods`](methods/index.md): one module per method, and the shared solvers;
- [`mtlbench.datasets`](datasets/index.md): one module per dataset;
- [`mtlbench.cluster`](cluster/index.md): the Ray executor, the sharded and DeepSpeed engines.

Private modules (`_name.py`) are implementation details and are left out; see
[Design](../design.md) for how the pieces fit together.
"""


def public_modules(folder: Path) -> list[tuple[str, ...]]:
    """Dotted parts below ``folder`` of every public module and package, sorted."""
    modules = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts) or "__pycache__" in path.parts:
            continue
        modules.append(parts)
    return modules


def main() -> None:
    subprocess.run([str(ROOT / ".ci" / "pkgroot")], check=True)
    nav = mkdocs_gen_files.Nav()
    for package in PACKAGES:
        for parts in public_modules(ROOT / package):
            dotted = ".".join(("mtlbench", package, *parts))
            page = Path("reference", package, *parts[:-1], f"{parts[-1] if parts else 'index'}.md")
            nav[(package, *parts)] = page.relative_to("reference").as_posix()
            with mkdocs_gen_files.open(page, "w") as out:
                out.write(f"# `{dotted}`\n\n::: {dotted}\n")
    with mkdocs_gen_files.open("reference/index.md", "w") as out:
        out.write(INDEX)
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as out:
        out.write("* [Overview](index.md)\n")
        out.writelines(nav.build_literate_nav())


main()
