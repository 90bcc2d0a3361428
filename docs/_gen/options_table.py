"""A Markdown table of a pydantic model's fields (name, type, default, constraint, meaning), shared
by the method pages (each method's ``Params``) and the engines page (each engine's
``options_model``), so the documented options are the validated ones."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥"}


def type_name(annotation: Any) -> str:
    """``int``, ``float | None``, ``'pairs' | 'gaussian'``: an annotation as a reader writes it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # constraints are shown in their own column
        return type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(argument) for argument in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is not None:
        arguments = ", ".join(
            "..." if argument is Ellipsis else type_name(argument)
            for argument in typing.get_args(annotation)
        )
        return f"{getattr(origin, '__name__', str(origin))}[{arguments}]"
    return getattr(annotation, "__name__", str(annotation))


def _constraint(metadata: list[Any]) -> str:
    bounds = []
    for item in metadata:
        for attribute, symbol in _BOUNDS.items():
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def _cell(text: object) -> str:
    """One table cell: pipes escaped outside code spans (inside them a pipe is literal)."""
    pieces = str(text).replace("\n", " ").split("`")
    return "`".join(
        piece if index % 2 else piece.replace("|", "\\|") for index, piece in enumerate(pieces)
    )


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return f"`{info.default_factory()!r}`"  # type: ignore[call-arg]  # no-argument factories
    if info.default is PydanticUndefined:
        return "required"
    return f"`{info.default!r}`"


def options_table(model: type[BaseModel]) -> str:
    """The fields of ``model`` as a Markdown table (a ``meaning`` column when any field has a
    ``description``), followed by the model's own docstring; a sentence when it has no field."""
    if not model.model_fields:
        return "No options.\n"
    described = any(info.description for info in model.model_fields.values())
    header = ["option", "type", "default", "constraint"] + (["meaning"] if described else [])
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, info in model.model_fields.items():
        cells = [f"`{name}`", f"`{type_name(info.annotation)}`", _default(info)]
        cells.append(_constraint(info.metadata))
        if described:
            cells.append(info.description or "")
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    docstring = inspect.getdoc(model) or ""
    own_docstring = "__doc__" in model.__dict__ and model.__doc__ is not None and docstring
    note = f"\n{docstring}\n" if own_docstring else ""
    return "\n".join(rows) + "\n" + note
