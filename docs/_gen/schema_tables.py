"""The results-schema page: each ``<!-- columns: RecordType -->`` marker of
``docs/results-schema.md`` becomes a table of every column of that Parquet table (name, Arrow
type, meaning with units), read from ``harness/records.py``: the schema comes from the record
dataclass, the meanings from ``COLUMN_DESCRIPTIONS``. A column without a description stops the
build, so the page cannot drift from the rows written."""

from __future__ import annotations

import re
from pathlib import Path

import mkdocs_gen_files
from mtlbench.harness import records

MARKER = re.compile(r"<!-- columns: (\w+) -->")
PAGE = "results-schema.md"


def column_table(record_name: str) -> str:
    """Every column of ``records.<record_name>``'s schema as a Markdown table."""
    record_type = getattr(records, record_name)
    descriptions = records.COLUMN_DESCRIPTIONS[record_name]
    schema = records.schema_of(record_type)
    undescribed = [name for name in schema.names if name not in descriptions]
    stale = sorted(set(descriptions) - set(schema.names))
    if undescribed or stale:
        raise SystemExit(
            f"harness/records.py: COLUMN_DESCRIPTIONS[{record_name!r}] lacks "
            f"{undescribed or 'none'} and describes columns that do not exist: {stale or 'none'}"
        )
    rows = ["| column | Arrow type | meaning |", "| --- | --- | --- |"]
    for column in schema:
        meaning = descriptions[column.name].replace("|", "\\|")
        rows.append(f"| `{column.name}` | `{column.type}` | {meaning} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    source = (Path(__file__).resolve().parents[1] / PAGE).read_text()
    with mkdocs_gen_files.open(PAGE, "w") as page:
        page.write(MARKER.sub(lambda match: column_table(match.group(1)), source))


main()
