"""SQL helpers of the hot paths: bulk inserts, and conditions for statements built once.

A statement a worker runs for every unit (a claim, a record, a pulse) is built once per dialect
and kept (``functools.cache`` on its builder), its values given as bound parameters when it
runs: SQLAlchemy then neither builds the statement nor computes its cache key again, which was
two thirds of a claim's CPU. Lists go in as one parameter (:func:`one_of`), so the statement's
text does not change with their length.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ARRAY, JSON, all_, any_, bindparam
from sqlalchemy.orm import Session


def rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a DML statement's result is a CursorResult)."""
    return int(result.rowcount or 0)


def one_of(column: Any, name: str, dialect: str) -> Any:
    """``column`` is one of the list given as parameter ``name`` when the statement runs: one
    array parameter on PostgreSQL (the same text, so the same prepared statement, whatever the
    list's length), an expanding parameter elsewhere."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def none_of(column: Any, name: str, dialect: str) -> Any:
    """``column`` is none of the list given as parameter ``name`` (an empty list: always true)."""
    if dialect == "postgresql":
        return column != all_(bindparam(name, type_=ARRAY(column.type)))
    return column.not_in(bindparam(name, expanding=True))


def insert_rows(session: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """Bulk INSERT in this transaction: COPY on PostgreSQL, executemany on SQLite."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        conn.execute(model.__table__.insert(), rows)
        return
    columns = list(rows[0])
    insert_values(session, model, columns, ([row[c] for c in columns] for row in rows))


def insert_values(session: Session, model: Any, columns: Sequence[str],
                  rows: Iterable[Sequence[Any]], chunk: int = 5_000) -> None:
    """Bulk INSERT of rows given as values in the order of ``columns``, taken from ``rows`` as
    they come: one COPY on PostgreSQL, executemany of ``chunk`` rows at a time on SQLite. A
    column not given takes its server default, as in COPY (not a Python-side one).

    psycopg's executemany sends one statement per row and multi-row VALUES
    statements cost more to build than to run; COPY streams the rows at once, and the server
    stores them while the next ones are made.
    """
    table = model.__table__
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        _sqlite_insert(conn, table, columns, rows, chunk)
        return
    if conn.dialect.name != "postgresql":
        taken = iter(rows)
        while part := [dict(zip(columns, row, strict=True))
                       for row in itertools.islice(taken, chunk)]:
            conn.execute(table.insert(), part)
        return
    as_json = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
    names = ", ".join(f'"{c}"' for c in columns)
    driver = conn.connection.driver_connection  # the transaction's own psycopg connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(
            f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        write, dumps = copy.write_row, json.dumps
        for row in rows:
            if as_json:
                row = list(row)
                for i in as_json:
                    value = row[i]
                    row[i] = "null" if value is None else dumps(value)
            write(row)


def _sqlite_insert(conn: Any, table: Any, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                   chunk: int) -> None:
    """executemany on the driver's cursor, each value made what its column type makes it (the
    type's bind processor) once per distinct object: SQLAlchemy's own executemany does that for
    every value of every row, and a batch's rows share their timestamps."""
    dialect = conn.dialect
    processors = [(i, process) for i, c in enumerate(columns) if (
        process := table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) is not None]
    names = ", ".join(f'"{c}"' for c in columns)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(columns))})'
    last: list[Any] = [object()] * len(columns)  # per column: the last value, what it became
    made: list[Any] = [None] * len(columns)
    cursor = conn.connection.driver_connection.cursor()  # the transaction's own connection
    try:
        taken = iter(rows)
        while part := list(itertools.islice(taken, chunk)):
            values = []
            for row in part:
                row = list(row)
                for i, process in processors:
                    value = row[i]
                    if value is not last[i]:
                        last[i], made[i] = value, process(value)
                    row[i] = made[i]
                values.append(row)
            cursor.executemany(sql, values)
    finally:
        cursor.close()
