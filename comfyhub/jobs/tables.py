"""A batch job's table (JSON rows, CSV text, JSONL text) read into checked rows, each
row numbered where the user finds it (jobs/params.py's docstring)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from comfyhub.jobs.cells import (
    FROM_JSON,
    BadValue,
    Limits,
    ParamsError,
    Target,
    cell_error,
    clip,
    column_targets,
    from_cell,
)

TABLE_FORMATS = ("json", "csv", "jsonl")

# --- tables ----------------------------------------------------------------------------------


def read_table(workflow, table, table_format, count, object_info, limits) -> tuple[list[Target], list[dict]]:
    if table_format == "csv":
        return _csv_table(workflow, _text(table, "CSV"), count, object_info, limits)
    if table_format == "jsonl":
        records = _jsonl_records(_text(table, "JSONL"))
    elif table_format == "json":
        records = _json_records(table)
    else:
        raise ParamsError(f"不支持的参数表格式“{clip(table_format)}”（可用：{'、'.join(TABLE_FORMATS)}）")
    return _object_table(workflow, records, count, object_info, limits)


def _text(data: Any, what: str) -> str:
    if isinstance(data, bytes | bytearray):
        try:
            return bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ParamsError(f"{what} 不是 UTF-8 编码（在 Excel 中请另存为“CSV UTF-8”）") from None
    if not isinstance(data, str):
        raise ParamsError(f"{what} 参数表应为文本")
    return data.removeprefix("\ufeff")


def _json_records(table: Any) -> Iterator[tuple[int, Any]]:
    if isinstance(table, str | bytes | bytearray):
        try:
            table = json.loads(_text(table, "JSON"))
        except ValueError as exc:
            where = f"（第 {exc.lineno} 行第 {exc.colno} 个字符处）" if isinstance(exc, json.JSONDecodeError) else ""
            raise ParamsError(f"参数表不是合法的 JSON{where}") from None
        except RecursionError:
            raise ParamsError("参数表不是合法的 JSON（嵌套过深）") from None
    if not isinstance(table, list):
        raise ParamsError("参数表应为 JSON 数组，每一项是一行，如 [{“6.text”: “a cat”}]")
    return enumerate(table, 1)


def _jsonl_records(text: str) -> Iterator[tuple[int, Any]]:
    # Split on \n only: a JSON string may hold U+2028 and the like, which splitlines() would cut.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            where = f"（第 {exc.colno} 个字符处）" if isinstance(exc, json.JSONDecodeError) else ""
            raise ParamsError(f"第 {number} 行不是合法的 JSON{where}", row=number) from None
        except RecursionError:
            raise ParamsError(f"第 {number} 行不是合法的 JSON（嵌套过深）", row=number) from None


def _object_table(workflow, records: Iterable[tuple[int, Any]], count, object_info, limits):
    """Rows that are objects (JSON, JSONL): the first one's keys are the columns."""
    targets: list[Target] | None = None
    names: set[str] = set()
    rows: list[dict] = []
    for number, record in records:
        if not isinstance(record, dict):
            raise ParamsError(f"第 {number} 行应为 JSON 对象", row=number)
        if targets is None:
            targets = column_targets(workflow, list(record), object_info, limits)
            names = set(record)
        if record.keys() != names:
            _raise_other_columns(record, targets, number)
        row = {}
        for t in targets:
            try:
                row[t.column] = FROM_JSON[t.kind](t, record[t.column])
            except BadValue as bad:
                raise cell_error(bad, t, number) from None
        rows.append(row)
        _check_count(len(rows), count, number, limits)
    if targets is None:
        raise ParamsError("参数表没有数据行")
    return targets, rows


def _raise_other_columns(record: dict, targets: list[Target], number: int) -> None:
    for t in targets:
        if t.column not in record:
            raise ParamsError(f"第 {number} 行缺少列“{clip(t.column)}”", row=number, column=t.column)
    names = {t.column for t in targets}
    extra = next(key for key in record if key not in names)
    raise ParamsError(f"第 {number} 行多出列“{clip(extra)}”（第一行没有这一列）", row=number, column=extra)


def _csv_table(workflow, text: str, count, object_info, limits):
    records = _csv_records(text, limits)
    first = next(records, None)
    if first is None or not any(cell.strip() for cell in first[1]):
        raise ParamsError("CSV 没有表头：第一行应为列名，如“6.text,3.seed”", row=1)
    header = [cell.strip() for cell in first[1]]  # spreadsheets leave stray spaces in names
    for index, name in enumerate(header, 1):
        if not name:
            raise ParamsError(f"表头第 {index} 列没有列名", row=1)
    targets = column_targets(workflow, header, object_info, limits)
    rows: list[dict] = []
    for number, cells in records:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(targets):
            raise ParamsError(f"第 {number} 行有 {len(cells)} 格，表头有 {len(targets)} 列", row=number)
        row = {}
        for t, cell in zip(targets, cells, strict=True):
            try:
                row[t.column] = from_cell(t, cell)
            except BadValue as bad:
                raise cell_error(bad, t, number) from None
        rows.append(row)
        _check_count(len(rows), count, number, limits)
    if not rows:
        raise ParamsError("参数表没有数据行")
    return targets, rows


def _csv_records(text: str, limits: Limits) -> Iterator[tuple[int, list[str]]]:
    """(record number, cells), the header being record 1; a quoted cell may hold newlines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    number = 0
    try:
        for cells in reader:
            number += 1
            yield number, cells
    except csv.Error as exc:
        if "field limit" in str(exc):
            problem = f"某一格超过 {limits.max_cell_chars:,} 字"
        elif "end of data" in str(exc):
            problem = "引号没有配对"
        else:
            problem = "引号用法不对：含逗号、引号或换行的格要整格加引号，格内的引号写两遍"
        raise ParamsError(f"第 {number + 1} 行：CSV 格式有误（{problem}）", row=number + 1) from None


def _check_count(rows: int, count: int, number: int, limits: Limits) -> None:
    if rows * count > limits.max_items:
        raise ParamsError(
            f"项数超过上限 {limits.max_items:,}：读到第 {number} 行时已有 {rows * count:,} 项（行数 × 重复次数）",
            row=number,
        )
