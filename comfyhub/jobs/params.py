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
  value, except for the core inputs in cells.KNOWN_FLOATS. int: an integer (CSV "12", JSON 12
  or 12.0; never 12.5 or true); float: any finite number; bool: JSON true/false, CSV
  true/false/1/0/是/否; text: a JSON string (a JSON number there is an error: it is more
  likely a column in the wrong place than a prompt) or any CSV cell. JSON strings are
  never read as numbers: "12" is text.
- Rows are numbered where the user finds them: a JSON row by its position (the first is
  1), a CSV row by its record with the header as row 1 (as a spreadsheet shows it), a
  JSONL row by its line.
- Errors name the first bad thing: the workflow, then the columns, then the cells in
  row order.

This module checks the whole submission and expands it; a column and one value for it
are cells.py's, reading a table is tables.py's.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from comfyhub.jobs.cells import (
    FROM_JSON,
    INT_MAX,
    LIMITS,
    BadValue,
    Limits,
    ParamsError,
    Target,
    clip,
    column_target,
    column_targets,
    locate,
    shown,
)
from comfyhub.jobs.tables import TABLE_FORMATS, read_table

__all__ = [
    "LIMITS",
    "SEED_RANGE",
    "TABLE_FORMATS",
    "JobParams",
    "Limits",
    "ParamsError",
    "SeedHelper",
    "apply",
    "check_workflow",
    "expand",
]

# ComfyUI's page draws random seeds below this; so do we.
SEED_RANGE = 2**50


SEED_MODES = ("random", "increment")
_SEED_KEYS = ("field", "mode", "start", "random_seed")


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
        targets, rows = read_table(workflow, table, table_format, count, object_info, limits)
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
            raise ParamsError(f"工作流中的节点编号 {clip(repr(node_id))} 应为文本")
        if not isinstance(node, Mapping):
            raise ParamsError(f"工作流中的节点 {clip(node_id)} 应为对象")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise ParamsError(f"工作流中的节点 {clip(node_id)} 缺少 class_type（需要“导出 (API)”格式）")
        if not isinstance(node.get("inputs"), Mapping):
            raise ParamsError(f"工作流中的节点 {clip(node_id)} 缺少 inputs 对象")


def apply(workflow: Mapping, params: Mapping[str, Any]) -> dict:
    """A new graph: `workflow` with each `NODE_ID.input` of `params` (an item) replaced.

    Nothing of `workflow` changes. The new graph shares every node that no column names,
    and a changed node gets its own node and `inputs` dicts while sharing their other
    values (`_meta`, links): cheap for thousands of items; send it, don't edit it.
    """
    graph = dict(workflow)
    copied: dict[str, dict] = {}
    for column, value in params.items():
        node_id, name, node = locate(workflow, column)
        inputs = copied.get(node_id)
        if inputs is None:
            inputs = copied[node_id] = dict(node["inputs"])
            graph[node_id] = {**node, "inputs": inputs}
        inputs[name] = value
    return graph


# --- grids, repeat, seeds --------------------------------------------------------------------


def _grid(workflow, grid, count, object_info, limits) -> tuple[list[Target], list[dict]]:
    if not isinstance(grid, Mapping):
        raise ParamsError("参数网格应为对象，如 {“6.text”: [“a cat”, “a dog”]}")
    targets = column_targets(workflow, list(grid), object_info, limits)
    total = count
    for t in targets:
        values = grid[t.column]
        if not isinstance(values, list) or not values:
            raise ParamsError(f"列“{clip(t.column)}”：应为非空列表", column=t.column)
        total *= len(values)
        if total > limits.max_items:  # before anything is built
            raise ParamsError(f"项数超过上限 {limits.max_items:,}（各列取值个数之积 × 重复次数）")
    lists = []
    for t in targets:
        checked = []
        for index, value in enumerate(grid[t.column], 1):
            try:
                checked.append(FROM_JSON[t.kind](t, value))
            except BadValue as bad:
                raise ParamsError(f"列“{clip(t.column)}”第 {index} 个值：{bad}", column=t.column) from None
        lists.append(checked)
    columns = [t.column for t in targets]
    return targets, [dict(zip(columns, combo, strict=True)) for combo in itertools.product(*lists)]


def _repeat(repeat: Any, limits: Limits) -> int:
    if type(repeat) is not int or not 1 <= repeat <= limits.max_items:
        raise ParamsError(f"重复次数应为 1 到 {limits.max_items:,} 之间的整数，实际是{shown(repeat)}")
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
            raise ParamsError(f"种子设置中没有“{clip(key)}”这一项（可用：{'、'.join(_SEED_KEYS)}）")
    field, mode = seed.get("field"), seed.get("mode")
    if not isinstance(field, str) or not field:
        raise ParamsError("种子设置缺少 field：要设置的输入，如“3.seed”")
    if mode not in SEED_MODES:
        raise ParamsError(f"种子方式应为 random 或 increment，实际是{shown(mode)}", column=field)
    start = seed.get("start")
    start = 0 if start is None else start
    if type(start) is not int or start < 0:
        raise ParamsError(f"种子起始值应为不小于 0 的整数，实际是{shown(start)}", column=field)
    random_seed = seed.get("random_seed")
    if random_seed is not None and type(random_seed) is not int:
        raise ParamsError(f"random_seed 应为整数，实际是{shown(random_seed)}", column=field)
    return SeedHelper(field, mode, start, random_seed)


def _seed_target(workflow, helper: SeedHelper, object_info, limits) -> Target:
    t = column_target(workflow, helper.field, object_info, limits)
    if t.kind != "int":
        node_id, _, name = helper.field.rpartition(".")
        raise ParamsError(
            f"种子设置：节点 {clip(node_id)} 的输入 {clip(name)} 不是整数，不能当种子", column=helper.field
        )
    return t


def _seeds(helper: SeedHelper, t: Target, total: int) -> list[int]:
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
