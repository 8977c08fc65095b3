"""One column of a batch job and one value for it: the node input a column names (and its
type, from ComfyUI's declarations or the workflow's value), and how a JSON value or a CSV
cell becomes a value of that type, or a Chinese message saying why not. The rules are
in jobs/params.py's docstring."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


class BadValue(Exception):
    """What is wrong with a value; whoever knows where it is turns it into a ParamsError."""


@dataclass(frozen=True)
class Target:
    """One column: the input it replaces and how to read a value for it."""

    column: str
    kind: str
    low: float | None
    high: float | None
    declared: bool  # the kind came from ComfyUI's declarations, not from the workflow's value
    current: Any  # the workflow's value
    max_chars: int


# --- columns -----------------------------------------------------------------------------------


def locate(workflow: Mapping, column: str) -> tuple[str, str, Mapping]:
    """The node and input a column names; it must be a value, not a link."""
    node_id, dot, name = column.rpartition(".") if isinstance(column, str) else ("", "", "")
    if not dot or not node_id or not name:
        raise ParamsError(f"列“{clip(column)}”：应写成“节点ID.输入名”，例如“3.seed”", column=column)
    node = workflow.get(node_id)
    if node is None:
        raise ParamsError(f"列“{clip(column)}”：工作流中没有节点 {clip(node_id)}", column=column)
    if name not in node["inputs"]:
        raise ParamsError(
            f"列“{clip(column)}”：节点 {clip(node_id)}（{clip(node['class_type'])}）没有输入 {clip(name)}",
            column=column,
        )
    if _is_link(node["inputs"][name]):
        raise ParamsError(
            f"列“{clip(column)}”：节点 {clip(node_id)} 的输入 {clip(name)} 是连线，不能用参数替换",
            column=column,
        )
    return node_id, name, node


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and type(value[1]) is int  # bool is not an output index
    )


def column_target(workflow: Mapping, column: str, object_info: Mapping | None, limits: Limits) -> Target:
    node_id, name, node = locate(workflow, column)
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
                f"列“{clip(column)}”：节点 {clip(node_id)} 的输入 {clip(name)} 不是可替换的值"
                "（只能替换数字、文本和开关）",
                column=column,
            )
    return Target(column, kind, low, high, declared is not None, current, limits.max_cell_chars)


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


def column_targets(workflow: Mapping, columns: list, object_info: Mapping | None, limits: Limits) -> list[Target]:
    if not columns:
        raise ParamsError("参数表没有列")
    if len(columns) > limits.max_columns:
        raise ParamsError(f"参数有 {len(columns)} 列，超过上限 {limits.max_columns}")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ParamsError(f"列“{clip(column)}”出现了两次", column=column)
        seen.add(column)
    return [column_target(workflow, column, object_info, limits) for column in columns]


# --- values ----------------------------------------------------------------------------------


def _json_int(t: Target, value: Any) -> int:
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    else:
        raise BadValue(f"应为整数，实际是{shown(value)}{_int_hint(t, value)}")
    return _in_range(t, number)


def _json_float(t: Target, value: Any) -> float:
    if type(value) not in (int, float):
        raise BadValue(f"应为数字，实际是{shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadValue(f"应为有限的数字，实际是{shown(value)}")
    return _in_range(t, number)


def _json_bool(t: Target, value: Any) -> bool:
    if type(value) is bool:
        return value
    raise BadValue(f"应为 true 或 false，实际是{shown(value)}")


def _json_str(t: Target, value: Any) -> str:
    if type(value) is not str:
        raise BadValue(f"应为文本，实际是{shown(value)}")
    return _not_too_long(t, value)


def _text_int(t: Target, text: str) -> int:
    number = _text_number(text)
    if type(number) is float and number.is_integer():
        number = int(number)
    if type(number) is not int:
        raise BadValue(f"应为整数，实际是“{clip(text)}”{_int_hint(t, number)}")
    return _in_range(t, number)


def _text_float(t: Target, text: str) -> float:
    number = _text_number(text)
    if number is None or not math.isfinite(number):
        raise BadValue(f"应为数字，实际是“{clip(text)}”")
    return _in_range(t, float(number))


def _text_bool(t: Target, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise BadValue(f"应为 true/false/1/0/是/否，实际是“{clip(text)}”")


def _text_str(t: Target, text: str) -> str:
    return text  # length and emptiness are checked for every cell


FROM_JSON: dict[str, Callable[[Target, Any], Any]] = {
    "int": _json_int,
    "float": _json_float,
    "bool": _json_bool,
    "str": _json_str,
}
_FROM_TEXT: dict[str, Callable[[Target, str], Any]] = {
    "int": _text_int,
    "float": _text_float,
    "bool": _text_bool,
    "str": _text_str,
}


def from_cell(t: Target, cell: str) -> Any:
    if len(cell) > t.max_chars:
        raise BadValue(f"超过 {t.max_chars:,} 字（实际 {len(cell):,} 字）")
    if not cell.strip():
        raise BadValue(_EMPTY)
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


def _in_range(t: Target, number: int | float) -> Any:
    low = t.low if t.low is not None else (INT_MIN if t.kind == "int" else None)
    high = t.high if t.high is not None else (INT_MAX if t.kind == "int" else None)
    if (low is not None and number < low) or (high is not None and number > high):
        if low is None:
            raise BadValue(f"应不大于 {high}，实际是 {number}")
        if high is None:
            raise BadValue(f"应不小于 {low}，实际是 {number}")
        raise BadValue(f"应在 {low} 到 {high} 之间，实际是 {number}")
    return number


def _not_too_long(t: Target, text: str) -> str:
    if len(text) > t.max_chars:
        raise BadValue(f"超过 {t.max_chars:,} 字（实际 {len(text):,} 字）")
    return text


def _int_hint(t: Target, value: Any) -> str:
    """Why 7.5 is refused where the user may have meant a float input."""
    if type(value) is float and math.isfinite(value) and not t.declared:
        return f"（工作流中这里的值是整数 {t.current}，所以只收整数）"
    return ""


def shown(value: Any) -> str:
    """A JSON value as a message quotes it, after 实际是."""
    if isinstance(value, str):
        return f"文本“{clip(value)}”"
    if value is None:
        return " null"
    if isinstance(value, bool):
        return " true" if value else " false"
    if isinstance(value, int | float):
        return f" {clip(repr(value))}"
    if isinstance(value, list):
        return "列表"
    if isinstance(value, dict):
        return "对象"
    return f" {type(value).__name__}"


def clip(text: Any) -> str:
    text = str(text)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def cell_error(bad: BadValue, t: Target, row: int) -> ParamsError:
    return ParamsError(f"第 {row} 行“{clip(t.column)}”：{bad}", row=row, column=t.column)
