"""A batch job's parameters: what a user submits → checked items; an item → a graph.

A job runs one API-format workflow (ComfyUI's "Export (API)": `{node_id: {"class_type":
..., "inputs": {name: value | [node_id, output_index]}}}`) once per item. An item sets
node inputs, each named by a column `NODE_ID.input` (`6.text`, `3.seed`), split on the
last dot so that subgraph ids such as `12:3` work. Pure: no database, no HTTP.

Where the items come from, exactly one of:
- a table: JSON rows (`[{"6.text": "a cat", "3.seed": 1}, ...]`), CSV text (the header
  row names the columns; UTF-8 with or without BOM) or JSONL text (an object a line);
- a grid: `{"6.text": ["a cat", "a dog"], "3.seed": [1, 2, 3]}`, the cartesian product
  with the first column outermost (a cat/1, a cat/2, a cat/3, a dog/1, ...);
- neither: the workflow as it is, allowed only with `repeat` > 1 or a seed helper.
`repeat` N puts each row (or combination) N times in a row. A seed helper
(`{"field": "3.seed", "mode": "random" | "increment", "start": 0, "random_seed": 7}`)
then sets that input on every item, so repeated items differ: increment counts up from
`start`; random draws distinct integers in [0, 2**50), the range ComfyUI's page uses,
the same ones again for the same `random_seed`. The helper wins over a table or grid
column of the same name (whose values are still checked).

The rules, each chosen so that one sentence explains it:
- Every item sets every column. An empty CSV cell (or one of spaces only) and a JSON or
  JSONL row without one of the first row's columns are errors, never "keep the
  workflow's value": to keep that value, leave the column out (a JSON "" is an explicit
  empty text). Blank CSV records and blank JSONL lines are skipped.
- A value must have the type of the input it replaces: the type ComfyUI declares when
  its /object_info is given (min and max checked too), else the type of the workflow's
  value, except for the core inputs in KNOWN_FLOATS. int: an integer (CSV "12", JSON 12
  or 12.0; never 12.5 or true); float: any finite number; bool: JSON true/false, CSV
  true/false/1/0/是/否; text: a JSON string (a JSON number there is an error: it is more
  likely a column in the wrong place than a prompt) or any CSV cell. JSON strings are
  never read as numbers: "12" is text.
- Rows are numbered where the user finds them: a JSON row by its position (the first is
  1), a CSV row by its record with the header as row 1 (as a spreadsheet shows it), a
  JSONL row by its line.
- Errors name the first bad thing: the workflow, then the columns, then the cells in
  row order.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# ComfyUI's page draws random seeds below this; so do we.
SEED_RANGE = 2**50
# The widest integers ComfyUI declares (a seed goes up to 2**64 - 1): beyond them a value is a typo.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

# Core inputs that ComfyUI declares FLOAT. The page writes an integral float as a JSON
# integer (cfg 8.0 is saved as `8`), so the workflow's value alone would make cfg an
# integer column and refuse 7.5. /object_info, when given, says this for every node.
KNOWN_FLOATS = frozenset(
    {
        ("KSampler", "cfg"),
        ("KSampler", "denoise"),
        ("KSamplerAdvanced", "cfg"),
        ("SamplerCustom", "cfg"),
        ("CFGGuider", "cfg"),
        ("BasicScheduler", "denoise"),
        ("LoraLoader", "strength_model"),
        ("LoraLoader", "strength_clip"),
        ("LoraLoaderModelOnly", "strength_model"),
        ("ControlNetApply", "strength"),
        ("ControlNetApplyAdvanced", "strength"),
        ("ControlNetApplyAdvanced", "start_percent"),
        ("ControlNetApplyAdvanced", "end_percent"),
        ("ImageScaleBy", "scale_by"),
        ("LatentUpscaleBy", "scale_by"),
        ("FluxGuidance", "guidance"),
        ("ModelSamplingSD3", "shift"),
        ("ModelSamplingFlux", "max_shift"),
        ("ModelSamplingFlux", "base_shift"),
    }
)

TABLE_FORMATS = ("json", "csv", "jsonl")
SEED_MODES = ("random", "increment")
_SEED_KEYS = ("field", "mode", "start", "random_seed")
_DECLARED = {"INT": "int", "FLOAT": "float", "BOOLEAN": "bool", "STRING": "str"}
_TRUE, _FALSE = {"true", "1", "是"}, {"false", "0", "否"}
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Longer number text is out of any range anyway; int() of thousands of digits is refused by Python.
_MAX_NUMBER_CHARS = 100
_SHOWN_CHARS = 40  # how much of a bad value a message quotes
_EMPTY = "为空；每一格都要填写（要沿用工作流中的值，请删去这一列）"


@dataclass(frozen=True)
class Limits:
    max_items: int = 100_000  # after repeat
    max_columns: int = 64  # of a table or grid; a seed helper's own column comes on top
    max_cell_chars: int = 10_000
    max_nodes: int = 2_000


LIMITS = Limits()


class ParamsError(ValueError):
    """Why the parameters were refused: a Chinese `message` naming the first bad thing;
    `row` (numbered as the module docstring says) and `column` where it is a cell."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        super().__init__(message)
        self.message = message
        self.row = row
        self.column = column


class _Bad(Exception):
    """What is wrong with a value; whoever knows where it is turns it into a ParamsError."""


@dataclass(frozen=True)
class SeedHelper:
    field: str
    mode: str  # "random" | "increment"
    start: int = 0
    random_seed: int | None = None


@dataclass(frozen=True)
class JobParams:
    """The checked items: `items[i]` maps each of `columns` to its typed value."""

    columns: list[str]
    kinds: dict[str, str]  # column -> "int" | "float" | "bool" | "str"
    items: list[dict[str, Any]]

    @property
    def total(self) -> int:
        return len(self.items)

    def preview(self, n: int = 10) -> list[dict[str, Any]]:
        """The inputs the first n graphs change, for the page to show before submitting."""
        return [dict(item) for item in self.items[: max(n, 0)]]


@dataclass(frozen=True)
class _Target:
    """One column: the input it replaces and how to read a value for it."""

    column: str
    kind: str
    low: float | None
    high: float | None
    declared: bool  # the kind came from ComfyUI's declarations, not from the workflow's value
    current: Any  # the workflow's value
    max_chars: int


# --- the entry points ------------------------------------------------------------------------


def expand(
    workflow: Any,
    *,
    table: Any = None,
    table_format: str = "json",
    grid: Any = None,
    repeat: Any = 1,
    seed: Mapping | SeedHelper | None = None,
    object_info: Mapping | None = None,
    limits: Limits = LIMITS,
) -> JobParams:
    """Check a submitted job and expand it into items; raises ParamsError.

    `table` is a list of row objects (or its JSON text) for "json", text (str, or UTF-8
    bytes) for "csv" and "jsonl". `object_info` is ComfyUI's GET /object_info, if at hand.
    """
    check_workflow(workflow, limits)
    count = _repeat(repeat, limits)
    helper = _seed_helper(seed)
    seed_target = _seed_target(workflow, helper, object_info, limits) if helper else None
    if table is not None and grid is not None:
        raise ParamsError("参数表和参数网格只能二选一")
    if table is not None:
        targets, rows = _table(workflow, table, table_format, count, object_info, limits)
    elif grid is not None:
        targets, rows = _grid(workflow, grid, count, object_info, limits)
    elif count > 1 or helper:
        targets, rows = [], [{}]
    else:
        raise ParamsError("请提供参数表或参数网格，或设置重复次数或种子")
    items = rows if count == 1 else [dict(row) for row in rows for _ in range(count)]
    columns = [t.column for t in targets]
    kinds = {t.column: t.kind for t in targets}
    if seed_target is not None:
        for item, value in zip(items, _seeds(helper, seed_target, len(items)), strict=True):
            item[seed_target.column] = value  # a table column of that name keeps its place
        if seed_target.column not in kinds:
            columns.append(seed_target.column)
            kinds[seed_target.column] = seed_target.kind
    return JobParams(columns=columns, kinds=kinds, items=items)


def check_workflow(workflow: Any, limits: Limits = LIMITS) -> None:
    """An API-format workflow: an object of nodes, each with `class_type` and `inputs`."""
    if not isinstance(workflow, Mapping):
        raise ParamsError("工作流应为 JSON 对象：在 ComfyUI 中用“导出 (API)”得到的文件")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise ParamsError("这是 ComfyUI 界面格式的工作流；请在 ComfyUI 中用“导出 (API)”保存后再提交")
    if not workflow:
        raise ParamsError("工作流中没有节点")
    if len(workflow) > limits.max_nodes:
        raise ParamsError(f"工作流有 {len(workflow):,} 个节点，超过上限 {limits.max_nodes:,}")
    for node_id, node in workflow.items():
        if not isinstance(node_id, str):
            raise ParamsError(f"工作流中的节点编号 {_cut(repr(node_id))} 应为文本")
        if not isinstance(node, Mapping):
            raise ParamsError(f"工作流中的节点 {_cut(node_id)} 应为对象")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise ParamsError(f"工作流中的节点 {_cut(node_id)} 缺少 class_type（需要“导出 (API)”格式）")
        if not isinstance(node.get("inputs"), Mapping):
            raise ParamsError(f"工作流中的节点 {_cut(node_id)} 缺少 inputs 对象")


def apply(workflow: Mapping, params: Mapping[str, Any]) -> dict:
    """A new graph: `workflow` with each `NODE_ID.input` of `params` (an item) replaced.

    Nothing of `workflow` changes. The new graph shares every node that no column names,
    and a changed node gets its own node and `inputs` dicts while sharing their other
    values (`_meta`, links): cheap for thousands of items; send it, don't edit it.
    """
    graph = dict(workflow)
    copied: dict[str, dict] = {}
    for column, value in params.items():
        node_id, name, node = _locate(workflow, column)
        inputs = copied.get(node_id)
        if inputs is None:
            inputs = copied[node_id] = dict(node["inputs"])
            graph[node_id] = {**node, "inputs": inputs}
        inputs[name] = value
    return graph


# --- columns -----------------------------------------------------------------------------------


def _locate(workflow: Mapping, column: str) -> tuple[str, str, Mapping]:
    """The node and input a column names; it must be a value, not a link."""
    node_id, dot, name = column.rpartition(".") if isinstance(column, str) else ("", "", "")
    if not dot or not node_id or not name:
        raise ParamsError(f"列“{_cut(column)}”：应写成“节点ID.输入名”，例如“3.seed”", column=column)
    node = workflow.get(node_id)
    if node is None:
        raise ParamsError(f"列“{_cut(column)}”：工作流中没有节点 {_cut(node_id)}", column=column)
    if name not in node["inputs"]:
        raise ParamsError(
            f"列“{_cut(column)}”：节点 {_cut(node_id)}（{_cut(node['class_type'])}）没有输入 {_cut(name)}",
            column=column,
        )
    if _is_link(node["inputs"][name]):
        raise ParamsError(
            f"列“{_cut(column)}”：节点 {_cut(node_id)} 的输入 {_cut(name)} 是连线，不能用参数替换", column=column
        )
    return node_id, name, node


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and type(value[1]) is int  # bool is not an output index
    )


def _target(workflow: Mapping, column: str, object_info: Mapping | None, limits: Limits) -> _Target:
    node_id, name, node = _locate(workflow, column)
    current = node["inputs"][name]
    declared = _declared(object_info, node["class_type"], name)
    if declared is not None:
        kind, low, high = declared
    elif (node["class_type"], name) in KNOWN_FLOATS and type(current) in (int, float):
        kind, low, high = "float", None, None
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(current))
        low = high = None
        if kind is None:
            raise ParamsError(
                f"列“{_cut(column)}”：节点 {_cut(node_id)} 的输入 {_cut(name)} 不是可替换的值"
                "（只能替换数字、文本和开关）",
                column=column,
            )
    return _Target(column, kind, low, high, declared is not None, current, limits.max_cell_chars)


def _declared(object_info: Mapping | None, class_type: str, name: str) -> tuple[str, Any, Any] | None:
    """The kind, min and max ComfyUI declares for an input; None where it does not say."""
    info = object_info.get(class_type) if isinstance(object_info, Mapping) else None
    groups = info.get("input") if isinstance(info, Mapping) else None
    if not isinstance(groups, Mapping):
        return None
    for group in (groups.get("required"), groups.get("optional")):
        spec = group.get(name) if isinstance(group, Mapping) else None
        if isinstance(spec, list | tuple) and spec and isinstance(spec[0], str) and spec[0] in _DECLARED:
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            return _DECLARED[spec[0]], _bound(options.get("min")), _bound(options.get("max"))
    return None  # a combo, a custom type, or an input ComfyUI doesn't list: the workflow's value says


def _bound(value: Any) -> float | None:
    return value if type(value) in (int, float) and math.isfinite(value) else None


def _targets(workflow: Mapping, columns: list, object_info: Mapping | None, limits: Limits) -> list[_Target]:
    if not columns:
        raise ParamsError("参数表没有列")
    if len(columns) > limits.max_columns:
        raise ParamsError(f"参数有 {len(columns)} 列，超过上限 {limits.max_columns}")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ParamsError(f"列“{_cut(column)}”出现了两次", column=column)
        seen.add(column)
    return [_target(workflow, column, object_info, limits) for column in columns]


# --- values ----------------------------------------------------------------------------------


def _json_int(t: _Target, value: Any) -> int:
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    else:
        raise _Bad(f"应为整数，实际是{_shown(value)}{_int_hint(t, value)}")
    return _in_range(t, number)


def _json_float(t: _Target, value: Any) -> float:
    if type(value) not in (int, float):
        raise _Bad(f"应为数字，实际是{_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Bad(f"应为有限的数字，实际是{_shown(value)}")
    return _in_range(t, number)


def _json_bool(t: _Target, value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _Bad(f"应为 true 或 false，实际是{_shown(value)}")


def _json_str(t: _Target, value: Any) -> str:
    if type(value) is not str:
        raise _Bad(f"应为文本，实际是{_shown(value)}")
    return _not_too_long(t, value)


def _text_int(t: _Target, text: str) -> int:
    number = _text_number(text)
    if type(number) is float and number.is_integer():
        number = int(number)
    if type(number) is not int:
        raise _Bad(f"应为整数，实际是“{_cut(text)}”{_int_hint(t, number)}")
    return _in_range(t, number)


def _text_float(t: _Target, text: str) -> float:
    number = _text_number(text)
    if number is None or not math.isfinite(number):
        raise _Bad(f"应为数字，实际是“{_cut(text)}”")
    return _in_range(t, float(number))


def _text_bool(t: _Target, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Bad(f"应为 true/false/1/0/是/否，实际是“{_cut(text)}”")


def _text_str(t: _Target, text: str) -> str:
    return text  # length and emptiness are checked for every cell


_FROM_JSON: dict[str, Callable[[_Target, Any], Any]] = {
    "int": _json_int,
    "float": _json_float,
    "bool": _json_bool,
    "str": _json_str,
}
_FROM_TEXT: dict[str, Callable[[_Target, str], Any]] = {
    "int": _text_int,
    "float": _text_float,
    "bool": _text_bool,
    "str": _text_str,
}


def _from_cell(t: _Target, cell: str) -> Any:
    if len(cell) > t.max_chars:
        raise _Bad(f"超过 {t.max_chars:,} 字（实际 {len(cell):,} 字）")
    if not cell.strip():
        raise _Bad(_EMPTY)
    return _FROM_TEXT[t.kind](t, cell)


def _text_number(text: str) -> int | float | None:
    s = text.strip()
    if len(s) > _MAX_NUMBER_CHARS:
        return None
    if _INT_TEXT.fullmatch(s):
        return int(s)
    if _NUMBER_TEXT.fullmatch(s):
        return float(s)
    return None


def _in_range(t: _Target, number: int | float) -> Any:
    low = t.low if t.low is not None else (INT_MIN if t.kind == "int" else None)
    high = t.high if t.high is not None else (INT_MAX if t.kind == "int" else None)
    if (low is not None and number < low) or (high is not None and number > high):
        if low is None:
            raise _Bad(f"应不大于 {high}，实际是 {number}")
        if high is None:
            raise _Bad(f"应不小于 {low}，实际是 {number}")
        raise _Bad(f"应在 {low} 到 {high} 之间，实际是 {number}")
    return number


def _not_too_long(t: _Target, text: str) -> str:
    if len(text) > t.max_chars:
        raise _Bad(f"超过 {t.max_chars:,} 字（实际 {len(text):,} 字）")
    return text


def _int_hint(t: _Target, value: Any) -> str:
    """Why 7.5 is refused where the user may have meant a float input."""
    if type(value) is float and math.isfinite(value) and not t.declared:
        return f"（工作流中这里的值是整数 {t.current}，所以只收整数）"
    return ""


def _shown(value: Any) -> str:
    """A JSON value as a message quotes it, after 实际是."""
    if isinstance(value, str):
        return f"文本“{_cut(value)}”"
    if value is None:
        return " null"
    if isinstance(value, bool):
        return " true" if value else " false"
    if isinstance(value, int | float):
        return f" {_cut(repr(value))}"
    if isinstance(value, list):
        return "列表"
    if isinstance(value, dict):
        return "对象"
    return f" {type(value).__name__}"


def _cut(text: Any) -> str:
    text = str(text)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _cell_error(bad: _Bad, t: _Target, row: int) -> ParamsError:
    return ParamsError(f"第 {row} 行“{_cut(t.column)}”：{bad}", row=row, column=t.column)


# --- tables ----------------------------------------------------------------------------------


def _table(workflow, table, table_format, count, object_info, limits) -> tuple[list[_Target], list[dict]]:
    if table_format == "csv":
        return _csv_table(workflow, _text(table, "CSV"), count, object_info, limits)
    if table_format == "jsonl":
        records = _jsonl_records(_text(table, "JSONL"))
    elif table_format == "json":
        records = _json_records(table)
    else:
        raise ParamsError(f"不支持的参数表格式“{_cut(table_format)}”（可用：{'、'.join(TABLE_FORMATS)}）")
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
    targets: list[_Target] | None = None
    names: set[str] = set()
    rows: list[dict] = []
    for number, record in records:
        if not isinstance(record, dict):
            raise ParamsError(f"第 {number} 行应为 JSON 对象", row=number)
        if targets is None:
            targets = _targets(workflow, list(record), object_info, limits)
            names = set(record)
        if record.keys() != names:
            _raise_other_columns(record, targets, number)
        row = {}
        for t in targets:
            try:
                row[t.column] = _FROM_JSON[t.kind](t, record[t.column])
            except _Bad as bad:
                raise _cell_error(bad, t, number) from None
        rows.append(row)
        _check_count(len(rows), count, number, limits)
    if targets is None:
        raise ParamsError("参数表没有数据行")
    return targets, rows


def _raise_other_columns(record: dict, targets: list[_Target], number: int) -> None:
    for t in targets:
        if t.column not in record:
            raise ParamsError(f"第 {number} 行缺少列“{_cut(t.column)}”", row=number, column=t.column)
    names = {t.column for t in targets}
    extra = next(key for key in record if key not in names)
    raise ParamsError(f"第 {number} 行多出列“{_cut(extra)}”（第一行没有这一列）", row=number, column=extra)


def _csv_table(workflow, text: str, count, object_info, limits):
    records = _csv_records(text, limits)
    first = next(records, None)
    if first is None or not any(cell.strip() for cell in first[1]):
        raise ParamsError("CSV 没有表头：第一行应为列名，如“6.text,3.seed”", row=1)
    header = [cell.strip() for cell in first[1]]  # spreadsheets leave stray spaces in names
    for index, name in enumerate(header, 1):
        if not name:
            raise ParamsError(f"表头第 {index} 列没有列名", row=1)
    targets = _targets(workflow, header, object_info, limits)
    rows: list[dict] = []
    for number, cells in records:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(targets):
            raise ParamsError(f"第 {number} 行有 {len(cells)} 格，表头有 {len(targets)} 列", row=number)
        row = {}
        for t, cell in zip(targets, cells, strict=True):
            try:
                row[t.column] = _from_cell(t, cell)
            except _Bad as bad:
                raise _cell_error(bad, t, number) from None
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


# --- grids, repeat, seeds --------------------------------------------------------------------


def _grid(workflow, grid, count, object_info, limits) -> tuple[list[_Target], list[dict]]:
    if not isinstance(grid, Mapping):
        raise ParamsError("参数网格应为对象，如 {“6.text”: [“a cat”, “a dog”]}")
    targets = _targets(workflow, list(grid), object_info, limits)
    total = count
    for t in targets:
        values = grid[t.column]
        if not isinstance(values, list) or not values:
            raise ParamsError(f"列“{_cut(t.column)}”：应为非空列表", column=t.column)
        total *= len(values)
        if total > limits.max_items:  # before anything is built
            raise ParamsError(f"项数超过上限 {limits.max_items:,}（各列取值个数之积 × 重复次数）")
    lists = []
    for t in targets:
        checked = []
        for index, value in enumerate(grid[t.column], 1):
            try:
                checked.append(_FROM_JSON[t.kind](t, value))
            except _Bad as bad:
                raise ParamsError(f"列“{_cut(t.column)}”第 {index} 个值：{bad}", column=t.column) from None
        lists.append(checked)
    columns = [t.column for t in targets]
    return targets, [dict(zip(columns, combo, strict=True)) for combo in itertools.product(*lists)]


def _repeat(repeat: Any, limits: Limits) -> int:
    if type(repeat) is not int or not 1 <= repeat <= limits.max_items:
        raise ParamsError(f"重复次数应为 1 到 {limits.max_items:,} 之间的整数，实际是{_shown(repeat)}")
    return repeat


def _seed_helper(seed: Mapping | SeedHelper | None) -> SeedHelper | None:
    if seed is None:
        return None
    if isinstance(seed, SeedHelper):
        seed = asdict(seed)
    if not isinstance(seed, Mapping):
        raise ParamsError("种子设置应为对象，如 {“field”: “3.seed”, “mode”: “random”}")
    for key in seed:
        if key not in _SEED_KEYS:
            raise ParamsError(f"种子设置中没有“{_cut(key)}”这一项（可用：{'、'.join(_SEED_KEYS)}）")
    field, mode = seed.get("field"), seed.get("mode")
    if not isinstance(field, str) or not field:
        raise ParamsError("种子设置缺少 field：要设置的输入，如“3.seed”")
    if mode not in SEED_MODES:
        raise ParamsError(f"种子方式应为 random 或 increment，实际是{_shown(mode)}", column=field)
    start = seed.get("start")
    start = 0 if start is None else start
    if type(start) is not int or start < 0:
        raise ParamsError(f"种子起始值应为不小于 0 的整数，实际是{_shown(start)}", column=field)
    random_seed = seed.get("random_seed")
    if random_seed is not None and type(random_seed) is not int:
        raise ParamsError(f"random_seed 应为整数，实际是{_shown(random_seed)}", column=field)
    return SeedHelper(field, mode, start, random_seed)


def _seed_target(workflow, helper: SeedHelper, object_info, limits) -> _Target:
    t = _target(workflow, helper.field, object_info, limits)
    if t.kind != "int":
        node_id, _, name = helper.field.rpartition(".")
        raise ParamsError(
            f"种子设置：节点 {_cut(node_id)} 的输入 {_cut(name)} 不是整数，不能当种子", column=helper.field
        )
    return t


def _seeds(helper: SeedHelper, t: _Target, total: int) -> list[int]:
    """`total` distinct seeds inside the input's range."""
    low = max(0, math.ceil(t.low) if t.low is not None else 0)
    high = math.floor(t.high) if t.high is not None else INT_MAX
    if helper.mode == "increment":
        last = helper.start + total - 1
        if helper.start < low or last > high:
            raise ParamsError(
                f"递增种子 {helper.start} 到 {last} 超出了该输入的范围 {low} 到 {high}", column=helper.field
            )
        return list(range(helper.start, last + 1))
    top = min(SEED_RANGE, high + 1)
    if top - low < total:
        raise ParamsError(f"该输入的范围 {low} 到 {top - 1} 不够 {total:,} 个不同的随机种子", column=helper.field)
    rng = random.Random(helper.random_seed)  # None: seeded from the OS, different each time
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < total:
        value = rng.randrange(low, top)
        if value not in seen:  # repeat is there to vary the seed: never give two items the same one
            seen.add(value)
            out.append(value)
    return out
