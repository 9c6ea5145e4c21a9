"""Turning query results into records by column name, never by position."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from psycopg.rows import BaseRowFactory, RowMaker, no_result

T = TypeVar("T")


def record_row(cls: Callable[..., T], **convert: Callable[[Any], Any]) -> BaseRowFactory[T]:
    """A row factory building `cls` from each row, every column going to the parameter of
    its name, after the columns named in `convert` pass through their function (such as
    text to an enum member).

    So a SELECT names (or aliases) its columns as the record's fields, in any order. The
    fields a query leaves to their defaults must be the record's last ones.

    Raises:
        ValueError: (when a query returns) a column names no field, a field before the
            last one filled has no column, or a column to convert is missing.
    """
    parameters = list(inspect.signature(cls).parameters)

    def factory(cursor: Any) -> RowMaker[T]:
        if cursor.description is None:
            return no_result
        names = [column.name for column in cursor.description]
        _check_columns(cls, parameters, names, convert)
        filled = parameters[: len(names)]
        # Mapped by name once per result, then one positional call per row: keywords per
        # row (psycopg's class_row) cost a claim of thousands of rows about 5% more.
        order = [names.index(name) for name in filled]
        in_order = order == list(range(len(names)))
        converters = [(filled.index(name), function) for name, function in convert.items()]

        def make(values: Sequence[Any]) -> T:
            args = list(values) if in_order else [values[i] for i in order]
            for index, function in converters:
                args[index] = function(args[index])
            return cls(*args)

        return make

    return factory


def _check_columns(
    cls: Callable[..., Any],
    parameters: list[str],
    names: list[str],
    convert: Mapping[str, Callable[[Any], Any]],
) -> None:
    """Raises ValueError unless `names` fill the leading `parameters` of `cls`, once each."""
    problems = [
        *(f"column {name} names no field" for name in names if name not in parameters),
        *(f"column {name} comes twice" for name in set(names) if names.count(name) > 1),
        *(f"field {name} has no column" for name in parameters[: len(names)] if name not in names),
        *(f"column {name} (to convert) is missing" for name in convert if name not in names),
    ]
    if problems:
        record = getattr(cls, "__name__", repr(cls))
        raise ValueError(f"{record} from columns {', '.join(names)}: {'; '.join(problems)}")
