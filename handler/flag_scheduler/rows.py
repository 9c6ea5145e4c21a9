"""Turning query results into records by column name, never by position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from psycopg.rows import BaseRowFactory, RowMaker

T = TypeVar("T")


def record_row(cls: Callable[..., T], **convert: Callable[[Any], Any]) -> BaseRowFactory[T]:
    """A row factory calling `cls` with each column as the keyword of its name, after
    passing the columns named in `convert` through their function (psycopg's class_row,
    plus conversions such as text to an enum member).

    A SELECT list therefore names (or aliases) its columns as the record's fields; a column
    that names no field fails loudly instead of landing in the wrong one.
    """

    # Any: psycopg names its cursor base class only in a private module.
    def factory(cursor: Any) -> RowMaker[T]:
        names = [column.name for column in cursor.description or ()]
        missing = set(convert).difference(names)
        if names and missing:
            raise ValueError(f"the query returns no column {', '.join(sorted(missing))}")
        converters = [(name, convert[name]) for name in names if name in convert]

        def make(values: Sequence[Any]) -> T:
            row = dict(zip(names, values, strict=True))
            for name, function in converters:
                row[name] = function(row[name])
            return cls(**row)

        return make

    return factory
