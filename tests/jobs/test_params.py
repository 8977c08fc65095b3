"""A batch job's parameters: tables, grids, repeat and seeds checked and expanded into items."""

from __future__ import annotations

import copy
import json

import pytest

from comfyhub.jobs.params import (
    SEED_RANGE,
    JobParams,
    Limits,
    ParamsError,
    SeedHelper,
    apply,
    check_workflow,
    expand,
)


def workflow() -> dict:
    """The default text-to-image workflow as "Export (API)" writes it (cfg 8.0 saved as 8)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 42,
                "steps": 20,
                "cfg": 8,
                "sampler_name": "euler",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a red fox", "clip": ["4", 1]},
            "_meta": {"title": "P"},
        },
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "12:3": {"class_type": "Flag", "inputs": {"enabled": True, "ratio": 0.5, "extra": None, "pair": [1, 2, 3]}},
    }


def error(wf=None, **kwargs) -> ParamsError:
    with pytest.raises(ParamsError) as caught:
        expand(workflow() if wf is None else wf, **kwargs)
    return caught.value


def where(e: ParamsError) -> tuple[str, int | None, str | None]:
    return e.message, e.row, e.column


def csv_items(text, **kwargs) -> list[dict]:
    return expand(workflow(), table=text, table_format="csv", **kwargs).items


# --- the workflow ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wf", "message"),
    [
        ([], "工作流应为 JSON 对象：在 ComfyUI 中用“导出 (API)”得到的文件"),
        ({"nodes": [], "links": []}, "这是 ComfyUI 界面格式的工作流；请在 ComfyUI 中用“导出 (API)”保存后再提交"),
        ({}, "工作流中没有节点"),
        ({"1": "node"}, "工作流中的节点 1 应为对象"),
        ({"1": {"inputs": {}}}, "工作流中的节点 1 缺少 class_type（需要“导出 (API)”格式）"),
        ({"1": {"class_type": "", "inputs": {}}}, "工作流中的节点 1 缺少 class_type（需要“导出 (API)”格式）"),
        ({"1": {"class_type": "X", "inputs": [1]}}, "工作流中的节点 1 缺少 inputs 对象"),
        ({1: {"class_type": "X", "inputs": {}}}, "工作流中的节点编号 1 应为文本"),
    ],
)
def test_a_workflow_that_is_not_api_format_is_refused(wf, message):
    assert where(error(wf, repeat=2)) == (message, None, None)


def test_a_workflow_over_the_node_limit_is_refused():
    wf = {str(i): {"class_type": "X", "inputs": {}} for i in range(5)}
    check_workflow(wf, Limits(max_nodes=5))
    assert error(wf, repeat=2, limits=Limits(max_nodes=4)).message == "工作流有 5 个节点，超过上限 4"


# --- columns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("seed", "列“seed”：应写成“节点ID.输入名”，例如“3.seed”"),
        (".seed", "列“.seed”：应写成“节点ID.输入名”，例如“3.seed”"),
        ("3.", "列“3.”：应写成“节点ID.输入名”，例如“3.seed”"),
        ("12.text", "列“12.text”：工作流中没有节点 12"),
        ("6.texts", "列“6.texts”：节点 6（CLIPTextEncode）没有输入 texts"),
        ("6.clip", "列“6.clip”：节点 6 的输入 clip 是连线，不能用参数替换"),
        ("12:3.extra", "列“12:3.extra”：节点 12:3 的输入 extra 不是可替换的值（只能替换数字、文本和开关）"),
        ("12:3.pair", "列“12:3.pair”：节点 12:3 的输入 pair 不是可替换的值（只能替换数字、文本和开关）"),
    ],
)
def test_each_column_names_a_value_input_of_an_existing_node(column, message):
    for e in (error(table=[{column: 1}]), error(grid={column: [1]}), error(table=f"{column}\n1\n", table_format="csv")):
        assert where(e) == (message, None, column)


def test_node_ids_are_split_on_the_last_dot_so_subgraph_ids_work():
    items = expand(workflow(), table=[{"12:3.ratio": 0.25, "12:3.enabled": False}]).items
    assert items == [{"12:3.ratio": 0.25, "12:3.enabled": False}]
    wf = {"a.b": {"class_type": "X", "inputs": {"text": "t"}}}
    assert expand(wf, table=[{"a.b.text": "u"}]).items == [{"a.b.text": "u"}]


def test_columns_are_limited_and_may_not_repeat():
    wf = {"1": {"class_type": "X", "inputs": {f"v{i}": 0 for i in range(5)}}}
    row = {f"1.v{i}": 1 for i in range(5)}
    assert expand(wf, table=[row], limits=Limits(max_columns=5)).columns == list(row)
    assert error(wf, table=[row], limits=Limits(max_columns=4)).message == "参数有 5 列，超过上限 4"
    e = error(table="3.seed,6.text,3.seed\n1,a,2\n", table_format="csv")
    assert where(e) == ("列“3.seed”出现了两次", None, "3.seed")
    assert error(table=[{}]).message == "参数表没有列"


# --- values from JSON (rows and grids) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "given", "expected"),
    [
        ("3.seed", 7, 7),
        ("3.seed", 12.0, 12),
        ("3.seed", -5, -5),
        ("3.cfg", 7.5, 7.5),  # the workflow says 8, ComfyUI declares a float
        ("3.cfg", 6, 6.0),
        ("3.denoise", 0.6, 0.6),
        ("12:3.ratio", 1, 1.0),
        ("12:3.enabled", False, False),
        ("6.text", "a cat", "a cat"),
        ("6.text", "", ""),
        ("4.ckpt_name", "flux.safetensors", "flux.safetensors"),
    ],
)
def test_json_values_of_the_right_type_are_taken(column, given, expected):
    value = expand(workflow(), table=[{column: given}]).items[0][column]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("column", "given", "reason"),
    [
        ("3.seed", 12.5, "应为整数，实际是 12.5（工作流中这里的值是整数 42，所以只收整数）"),
        ("3.seed", True, "应为整数，实际是 true"),
        ("3.seed", "12", "应为整数，实际是文本“12”"),
        ("3.seed", None, "应为整数，实际是 null"),
        ("3.seed", [1], "应为整数，实际是列表"),
        ("3.seed", 2**64, f"应在 {-(2**63)} 到 {2**64 - 1} 之间，实际是 {2**64}"),
        ("3.cfg", "7.5", "应为数字，实际是文本“7.5”"),
        ("3.cfg", float("nan"), "应为有限的数字，实际是 nan"),
        ("3.cfg", False, "应为数字，实际是 false"),
        ("12:3.enabled", 1, "应为 true 或 false，实际是 1"),
        ("12:3.enabled", "true", "应为 true 或 false，实际是文本“true”"),
        ("6.text", 12, "应为文本，实际是 12"),
        ("6.text", {"a": 1}, "应为文本，实际是对象"),
    ],
)
def test_json_values_of_the_wrong_type_name_the_row_and_column(column, given, reason):
    e = error(table=[{column: _good(column)}, {column: _good(column)}, {column: given}])
    assert where(e) == (f"第 3 行“{column}”：{reason}", 3, column)
    e = error(grid={column: [_good(column), given]})
    assert where(e) == (f"列“{column}”第 2 个值：{reason}", None, column)


def _good(column: str):
    return {"3.seed": 1, "3.cfg": 7.0, "12:3.enabled": True, "6.text": "ok"}[column]


def test_a_long_json_string_is_refused():
    limits = Limits(max_cell_chars=5)
    assert expand(workflow(), table=[{"6.text": "12345"}], limits=limits).items[0]["6.text"] == "12345"
    e = error(table=[{"6.text": "123456"}], limits=limits)
    assert where(e) == ("第 1 行“6.text”：超过 5 字（实际 6 字）", 1, "6.text")


# --- JSON rows -----------------------------------------------------------------------------------


def test_json_rows_keep_their_order_and_may_come_as_text():
    rows = [{"6.text": "a cat", "3.seed": 1}, {"3.seed": 2, "6.text": "a dog"}]
    for table in (rows, json.dumps(rows), json.dumps(rows).encode()):
        params = expand(workflow(), table=table)
        assert params.columns == ["6.text", "3.seed"]
        assert params.items == [{"6.text": "a cat", "3.seed": 1}, {"6.text": "a dog", "3.seed": 2}]
        assert params.total == 2 and params.kinds == {"6.text": "str", "3.seed": "int"}


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"6.text": "a"}, ("参数表应为 JSON 数组，每一项是一行，如 [{“6.text”: “a cat”}]", None, None)),
        ("[{", ("参数表不是合法的 JSON（第 1 行第 3 个字符处）", None, None)),
        ([], ("参数表没有数据行", None, None)),
        ([{"6.text": "a"}, "b"], ("第 2 行应为 JSON 对象", 2, None)),
        ([{"6.text": "a", "3.seed": 1}, {"6.text": "b"}], ("第 2 行缺少列“3.seed”", 2, "3.seed")),
        ([{"6.text": "a"}, {"6.text": "b", "3.seed": 1}], ("第 2 行多出列“3.seed”（第一行没有这一列）", 2, "3.seed")),
    ],
)
def test_malformed_json_tables_are_refused(table, expected):
    assert where(error(table=table)) == expected


def test_the_first_bad_cell_is_named_rows_before_columns():
    rows = [{"6.text": "ok", "3.seed": 1}, {"6.text": "ok", "3.seed": "x"}, {"6.text": 5, "3.seed": "y"}]
    assert where(error(table=rows)) == ("第 2 行“3.seed”：应为整数，实际是文本“x”", 2, "3.seed")


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_quoting_newlines_bom_and_crlf():
    text = '6.text,3.seed\r\n"a cat, sitting",1\r\n"two\nlines ""quoted""",2\r\nplain,3\r\n'
    expected = [
        {"6.text": "a cat, sitting", "3.seed": 1},
        {"6.text": 'two\nlines "quoted"', "3.seed": 2},
        {"6.text": "plain", "3.seed": 3},
    ]
    assert csv_items(text) == expected
    assert csv_items("\ufeff" + text) == expected
    assert csv_items(("\ufeff" + text).encode()) == expected
    assert csv_items(text.encode()) == expected


def test_csv_that_is_not_utf8_is_refused():
    e = error(table="6.text\n你好\n".encode("gbk"), table_format="csv")
    assert where(e) == ("CSV 不是 UTF-8 编码（在 Excel 中请另存为“CSV UTF-8”）", None, None)


@pytest.mark.parametrize(
    ("column", "cell", "expected"),
    [
        ("3.seed", "12", 12),
        ("3.seed", " 12 ", 12),
        ("3.seed", "+12", 12),
        ("3.seed", "12.0", 12),
        ("3.seed", "1e3", 1000),
        ("3.cfg", "7.5", 7.5),
        ("3.cfg", "8", 8.0),
        ("3.cfg", ".5", 0.5),
        ("3.cfg", "1e-3", 0.001),
        ("12:3.enabled", "true", True),
        ("12:3.enabled", "TRUE", True),
        ("12:3.enabled", "1", True),
        ("12:3.enabled", "是", True),
        ("12:3.enabled", "False", False),
        ("12:3.enabled", "0", False),
        ("12:3.enabled", "否", False),
        ("6.text", " 12 ", " 12 "),
    ],
)
def test_csv_cells_are_read_as_the_type_they_replace(column, cell, expected):
    value = csv_items(f'{column}\n"{cell}"\n')[0][column]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("column", "cell", "reason"),
    [
        ("3.seed", "abc", "应为整数，实际是“abc”"),
        ("3.seed", "12.5", "应为整数，实际是“12.5”（工作流中这里的值是整数 42，所以只收整数）"),
        ("3.seed", "1_000", "应为整数，实际是“1_000”"),
        ("3.seed", "١٢", "应为整数，实际是“١٢”"),
        ("3.seed", "9" * 500, "应为整数，实际是“" + "9" * 40 + "…”"),
        ("3.seed", "18446744073709551616", f"应在 {-(2**63)} 到 {2**64 - 1} 之间，实际是 {2**64}"),
        ("3.cfg", "inf", "应为数字，实际是“inf”"),
        ("3.cfg", "nan", "应为数字，实际是“nan”"),
        ("3.cfg", "1e999", "应为数字，实际是“1e999”"),
        ("12:3.enabled", "maybe", "应为 true/false/1/0/是/否，实际是“maybe”"),
        ("3.seed", "", "为空；每一格都要填写（要沿用工作流中的值，请删去这一列）"),
        ("6.text", "   ", "为空；每一格都要填写（要沿用工作流中的值，请删去这一列）"),
    ],
)
def test_bad_csv_cells_name_the_spreadsheet_row_and_column(column, cell, reason):
    text = f'5.width,{column}\n1,"{_csv_good(column)}"\n2,"{cell}"\n'
    e = error(table=text, table_format="csv")
    assert where(e) == (f"第 3 行“{column}”：{reason}", 3, column)  # the header is row 1


def _csv_good(column: str) -> str:
    return {"3.seed": "1", "3.cfg": "7", "12:3.enabled": "true", "6.text": "ok"}[column]


def test_a_long_csv_cell_is_refused():
    e = error(table="6.text\n123456\n", table_format="csv", limits=Limits(max_cell_chars=5))
    assert where(e) == ("第 2 行“6.text”：超过 5 字（实际 6 字）", 2, "6.text")


def test_blank_csv_records_are_skipped_but_counted():
    text = "6.text,3.seed\n\na,1\n,\n\nb,x\n"
    assert where(error(table=text, table_format="csv")) == ("第 6 行“3.seed”：应为整数，实际是“x”", 6, "3.seed")
    assert csv_items("6.text,3.seed\n\na,1\n , \n") == [{"6.text": "a", "3.seed": 1}]


def test_header_names_are_trimmed():
    assert csv_items(" 6.text , 3.seed\na,1\n") == [{"6.text": "a", "3.seed": 1}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("CSV 没有表头：第一行应为列名，如“6.text,3.seed”", 1, None)),
        (",\n1,2\n", ("CSV 没有表头：第一行应为列名，如“6.text,3.seed”", 1, None)),
        ("6.text,\na,b\n", ("表头第 2 列没有列名", 1, None)),
        ("6.text,3.seed\n", ("参数表没有数据行", None, None)),
        ("6.text,3.seed\na,1\nb\n", ("第 3 行有 1 格，表头有 2 列", 3, None)),
        ("6.text,3.seed\na,1,2\n", ("第 2 行有 3 格，表头有 2 列", 2, None)),
        ('6.text,3.seed\na,1\n"b,2\nc,3\n', ("第 3 行：CSV 格式有误（引号没有配对）", 3, None)),
        (
            '6.text,3.seed\n"a"b,1\n',
            ("第 2 行：CSV 格式有误（引号用法不对：含逗号、引号或换行的格要整格加引号，格内的引号写两遍）", 2, None),
        ),
    ],
)
def test_malformed_csv_is_refused_with_its_row(text, expected):
    assert where(error(table=text, table_format="csv")) == expected


def test_an_unknown_table_format_is_refused():
    assert error(table="x", table_format="xlsx").message == "不支持的参数表格式“xlsx”（可用：json、csv、jsonl）"


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_rows_skip_blank_lines_and_are_numbered_by_line():
    text = '{"6.text": "a\u2028b", "3.seed": 1}\n\n  \r\n{"6.text": "c", "3.seed": 2}\r\n'
    params = expand(workflow(), table=text, table_format="jsonl")
    assert params.items == [{"6.text": "a\u2028b", "3.seed": 1}, {"6.text": "c", "3.seed": 2}]
    bad = text + '\n{"6.text": "d", "3.seed": 2.5}\n'
    e = error(table=bad, table_format="jsonl")
    assert where(e)[1:] == (6, "3.seed") and e.message.startswith("第 6 行“3.seed”：应为整数，实际是 2.5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"6.text": "a"}\n{"6.text": \n', ("第 2 行不是合法的 JSON（第 12 个字符处）", 2, None)),
        ('{"6.text": "a"}\n["b"]\n', ("第 2 行应为 JSON 对象", 2, None)),
        ('{"6.text": "a", "3.seed": 1}\n\n{"6.text": "b"}\n', ("第 3 行缺少列“3.seed”", 3, "3.seed")),
        ("\n\n", ("参数表没有数据行", None, None)),
        (["x"], ("JSONL 参数表应为文本", None, None)),
    ],
)
def test_malformed_jsonl_is_refused_with_its_line(text, expected):
    assert where(error(table=text, table_format="jsonl")) == expected


# --- grids and repeat --------------------------------------------------------------------------


def test_a_grid_is_the_product_with_the_first_column_outermost():
    params = expand(workflow(), grid={"6.text": ["a cat", "a dog"], "3.seed": [1, 2, 3]})
    assert [(i["6.text"], i["3.seed"]) for i in params.items] == [
        ("a cat", 1),
        ("a cat", 2),
        ("a cat", 3),
        ("a dog", 1),
        ("a dog", 2),
        ("a dog", 3),
    ]
    assert params.columns == ["6.text", "3.seed"]


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        (["6.text"], ("参数网格应为对象，如 {“6.text”: [“a cat”, “a dog”]}", None, None)),
        ({}, ("参数表没有列", None, None)),
        ({"6.text": []}, ("列“6.text”：应为非空列表", None, "6.text")),
        ({"6.text": "a cat"}, ("列“6.text”：应为非空列表", None, "6.text")),
    ],
)
def test_malformed_grids_are_refused(grid, expected):
    assert where(error(grid=grid)) == expected


def test_repeat_puts_each_row_several_times_in_a_row():
    items = expand(workflow(), table=[{"6.text": "a"}, {"6.text": "b"}], repeat=3).items
    assert [i["6.text"] for i in items] == ["a", "a", "a", "b", "b", "b"]
    items[0]["6.text"] = "changed"
    assert items[1]["6.text"] == "a"  # each item is its own dict


@pytest.mark.parametrize("repeat", [0, -1, "2", True, 2.0, 100_001])
def test_repeat_must_be_a_positive_integer_within_the_limit(repeat):
    assert error(table=[{"6.text": "a"}], repeat=repeat).message.startswith("重复次数应为 1 到 100,000 之间的整数")


def test_a_table_and_a_grid_together_or_nothing_at_all_are_refused():
    assert error(table=[{"6.text": "a"}], grid={"6.text": ["b"]}).message == "参数表和参数网格只能二选一"
    assert error().message == "请提供参数表或参数网格，或设置重复次数或种子"


def test_neither_table_nor_grid_runs_the_workflow_as_it_is_repeat_times():
    params = expand(workflow(), repeat=3)
    assert params.items == [{}, {}, {}] and params.columns == [] and params.total == 3


# --- limits --------------------------------------------------------------------------------------


def test_the_item_limit_counts_rows_times_repeat():
    limits = Limits(max_items=6)
    rows = [{"6.text": str(i)} for i in range(3)]
    assert expand(workflow(), table=rows, repeat=2, limits=limits).total == 6
    e = error(table=[*rows, {"6.text": "x"}], repeat=2, limits=limits)
    assert where(e) == ("项数超过上限 6：读到第 4 行时已有 8 项（行数 × 重复次数）", 4, None)
    e = error(table="6.text\na\nb\nc\nd\n", table_format="csv", repeat=2, limits=limits)
    assert e.row == 5  # the header is row 1
    assert expand(workflow(), grid={"6.text": ["a", "b", "c"], "3.seed": [1, 2]}, limits=limits).total == 6
    e = error(grid={"6.text": ["a", "b", "c"], "3.seed": [1, "bad"]}, repeat=2, limits=limits)
    assert e.message == "项数超过上限 6（各列取值个数之积 × 重复次数）"  # counted before any value is read


# --- seeds ---------------------------------------------------------------------------------------


def test_increment_seeds_count_up_across_repeated_items():
    params = expand(
        workflow(), table=[{"6.text": "a"}, {"6.text": "b"}], repeat=2, seed={"field": "3.seed", "mode": "increment"}
    )
    assert params.items == [
        {"6.text": "a", "3.seed": 0},
        {"6.text": "a", "3.seed": 1},
        {"6.text": "b", "3.seed": 2},
        {"6.text": "b", "3.seed": 3},
    ]
    assert params.columns == ["6.text", "3.seed"] and params.kinds["3.seed"] == "int"
    items = expand(workflow(), repeat=3, seed={"field": "3.seed", "mode": "increment", "start": 100}).items
    assert items == [{"3.seed": 100}, {"3.seed": 101}, {"3.seed": 102}]


def test_random_seeds_are_distinct_in_range_and_reproducible_with_random_seed():
    def seeds(random_seed, repeat=500):
        helper = {"field": "3.seed", "mode": "random", "random_seed": random_seed}
        return [i["3.seed"] for i in expand(workflow(), grid={"6.text": ["a", "b"]}, repeat=repeat, seed=helper).items]

    first = seeds(7)
    assert len(first) == 1000 and len(set(first)) == 1000
    assert all(0 <= s < SEED_RANGE for s in first)
    assert seeds(7) == first
    assert seeds(8) != first
    assert seeds(None, 5) != seeds(None, 5)  # fresh ones without random_seed
    as_object = expand(workflow(), repeat=1000, seed=SeedHelper("3.seed", "random", random_seed=7)).items
    assert [i["3.seed"] for i in as_object] == first  # the draws depend on random_seed and the count only


def test_the_seed_helper_wins_over_a_column_that_keeps_its_place_and_is_still_checked():
    rows = [{"3.seed": 5, "6.text": "a"}, {"3.seed": 5, "6.text": "b"}]
    params = expand(workflow(), table=rows, seed={"field": "3.seed", "mode": "increment", "start": 10})
    assert params.columns == ["3.seed", "6.text"]
    assert params.items == [{"3.seed": 10, "6.text": "a"}, {"3.seed": 11, "6.text": "b"}]
    e = error(table=[{"3.seed": "x"}], seed={"field": "3.seed", "mode": "increment"})
    assert where(e) == ("第 1 行“3.seed”：应为整数，实际是文本“x”", 1, "3.seed")


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        ("3.seed", ("种子设置应为对象，如 {“field”: “3.seed”, “mode”: “random”}", None, None)),
        ({"mode": "random"}, ("种子设置缺少 field：要设置的输入，如“3.seed”", None, None)),
        (
            {"field": "3.seed", "mode": "shuffle"},
            ("种子方式应为 random 或 increment，实际是文本“shuffle”", None, "3.seed"),
        ),
        ({"field": "3.seed"}, ("种子方式应为 random 或 increment，实际是 null", None, "3.seed")),
        (
            {"field": "3.seed", "mode": "increment", "star": 1},
            ("种子设置中没有“star”这一项（可用：field、mode、start、random_seed）", None, None),
        ),
        (
            {"field": "3.seed", "mode": "increment", "start": -1},
            ("种子起始值应为不小于 0 的整数，实际是 -1", None, "3.seed"),
        ),
        (
            {"field": "3.seed", "mode": "random", "random_seed": "7"},
            ("random_seed 应为整数，实际是文本“7”", None, "3.seed"),
        ),
        ({"field": "6.text", "mode": "random"}, ("种子设置：节点 6 的输入 text 不是整数，不能当种子", None, "6.text")),
        (
            {"field": "6.clip", "mode": "random"},
            ("列“6.clip”：节点 6 的输入 clip 是连线，不能用参数替换", None, "6.clip"),
        ),
        (
            {"field": "3.seed", "mode": "increment", "start": 2**64 - 2},
            (f"递增种子 {2**64 - 2} 到 {2**64} 超出了该输入的范围 0 到 {2**64 - 1}", None, "3.seed"),
        ),
    ],
)
def test_a_bad_seed_helper_is_refused(seed, expected):
    assert where(error(repeat=3, seed=seed)) == expected


# --- ComfyUI's declarations ----------------------------------------------------------------------

OBJECT_INFO = {
    "KSampler": {
        "input": {
            "required": {
                "seed": ["INT", {"default": 0, "min": 0, "max": 9}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "sampler_name": [["euler", "dpmpp_2m"], {}],
            }
        }
    },
    "EmptyLatentImage": {"input": {"required": {"width": ["FLOAT", {}]}}},
    "Flag": {"input": {"optional": {"ratio": ["BOOLEAN", {}]}}},
}


def test_declared_types_and_ranges_win_over_the_workflows_values():
    def run(**kwargs):
        return expand(workflow(), object_info=OBJECT_INFO, **kwargs)

    assert run(table=[{"5.width": 512.5, "12:3.ratio": True}]).items == [{"5.width": 512.5, "12:3.ratio": True}]
    e = error(table=[{"3.steps": 1}, {"3.steps": 0}], object_info=OBJECT_INFO)
    assert where(e) == ("第 2 行“3.steps”：应在 1 到 10000 之间，实际是 0", 2, "3.steps")
    e = error(table=[{"3.steps": 2.5}], object_info=OBJECT_INFO)
    assert e.message == "第 1 行“3.steps”：应为整数，实际是 2.5"  # declared: no hint about the workflow
    # A combo says nothing about the type: the workflow's text value does.
    assert run(table=[{"3.sampler_name": "anything"}]).items == [{"3.sampler_name": "anything"}]
    # Seeds stay inside the declared range.
    assert sorted(i["3.seed"] for i in run(repeat=10, seed={"field": "3.seed", "mode": "random"}).items) == list(
        range(10)
    )
    e = error(repeat=11, seed={"field": "3.seed", "mode": "random"}, object_info=OBJECT_INFO)
    assert where(e) == ("该输入的范围 0 到 9 不够 11 个不同的随机种子", None, "3.seed")
    e = error(repeat=3, seed={"field": "3.seed", "mode": "increment", "start": 8}, object_info=OBJECT_INFO)
    assert where(e) == ("递增种子 8 到 10 超出了该输入的范围 0 到 9", None, "3.seed")


def test_odd_object_info_is_ignored():
    for info in ({"KSampler": "x"}, {"KSampler": {"input": {"required": {"seed": []}}}}, {"KSampler": {"input": 1}}):
        assert expand(workflow(), table=[{"3.seed": 3}], object_info=info).items == [{"3.seed": 3}]


# --- preview and apply -------------------------------------------------------------------------


def test_preview_gives_the_first_items_changed_inputs():
    params = expand(workflow(), grid={"6.text": ["a", "b"], "3.seed": [1, 2]})
    assert isinstance(params, JobParams)
    assert params.preview(3) == [
        {"6.text": "a", "3.seed": 1},
        {"6.text": "a", "3.seed": 2},
        {"6.text": "b", "3.seed": 1},
    ]
    assert params.preview(100) == params.items and params.preview(0) == []
    params.preview(1)[0]["6.text"] = "changed"
    assert params.items[0]["6.text"] == "a"


def test_apply_returns_a_new_graph_and_leaves_the_workflow_alone():
    wf = workflow()
    before = copy.deepcopy(wf)
    params = expand(
        wf, table=[{"6.text": "a cat", "3.seed": 1, "3.cfg": 7.5}, {"6.text": "a dog", "3.seed": 2, "3.cfg": 6}]
    )
    graphs = [apply(wf, item) for item in params.items]
    assert wf == before
    assert graphs[0]["6"] == {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a cat", "clip": ["4", 1]},
        "_meta": {"title": "P"},
    }
    assert graphs[1]["3"]["inputs"] == {**before["3"]["inputs"], "seed": 2, "cfg": 6.0}
    assert graphs[0]["4"] is wf["4"] and graphs[0]["6"] is not wf["6"]  # untouched nodes are shared
    graphs[0]["6"]["inputs"]["text"] = "edited"
    graphs[0]["3"]["class_type"] = "edited"
    assert wf == before and graphs[1]["6"]["inputs"]["text"] == "a dog"
    assert apply(wf, {}) == wf


def test_apply_refuses_a_column_the_workflow_does_not_have():
    with pytest.raises(ParamsError) as caught:
        apply(workflow(), {"99.text": "x"})
    assert where(caught.value) == ("列“99.text”：工作流中没有节点 99", None, "99.text")
