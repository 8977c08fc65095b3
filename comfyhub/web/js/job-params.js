// 批量生成's parameters as the page sees them before submitting: a small CSV reader, JSONL
// rows, a grid's values typed by the workflow, and the preview (the first items and the
// total). Pure: no DOM, no requests. The server checks every cell again on submit (and
// is the authority): what is found here is a warning shown early, never a refusal.

export const MAX_ITEMS = 100000; // the server's limit on items after repeat
const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const TRUE = new Set(["true", "1", "是"]);
const FALSE = new Set(["false", "0", "否"]);

/** A parameter table problem, with the row numbered as the server numbers it. */
export class TableError extends Error {
  constructor(message, row = null) {
    super(message);
    this.row = row;
  }
}

/**
 * CSV text → [[number, cells]]: records numbered from 1 (the header), as a spreadsheet
 * shows them. Quoted cells may hold commas, newlines and "" (one quote). Empty lines are
 * records too (they keep the numbering), with one empty cell.
 */
export function csvRecords(text) {
  const src = String(text).replace(/^\ufeff/, "");
  const records = [];
  let cells = [];
  let cell = "";
  let quoted = false; // inside a quoted cell
  let started = 0; // the record the current quote opened in
  const endCell = () => { cells.push(cell); cell = ""; };
  const endRecord = () => { endCell(); records.push([records.length + 1, cells]); cells = []; };
  for (let i = 0; i < src.length; i += 1) {
    const c = src[i];
    if (quoted) {
      if (c !== '"') cell += c;
      else if (src[i + 1] === '"') { cell += '"'; i += 1; } else quoted = false;
    } else if (c === '"' && cell === "") {
      quoted = true;
      started = records.length + 1;
    } else if (c === ",") endCell();
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && src[i + 1] === "\n") i += 1;
      endRecord();
    } else cell += c;
  }
  if (quoted) throw new TableError(`第 ${started} 行：CSV 引号没有配对`, started);
  if (cell !== "" || cells.length) endRecord();
  return records;
}

const blank = (cells) => cells.every((c) => !c.trim());

/** CSV text → {columns, rows: [object]} (cells as text; blank records skipped). */
export function csvTable(text) {
  const records = csvRecords(text);
  if (!records.length || blank(records[0][1])) throw new TableError("CSV 没有表头：第一行应为列名，如“6.text,1.color”", 1);
  const columns = records[0][1].map((c) => c.trim());
  const rows = [];
  for (const [number, cells] of records.slice(1)) {
    if (blank(cells)) continue;
    if (cells.length !== columns.length) {
      throw new TableError(`第 ${number} 行有 ${cells.length} 格，表头有 ${columns.length} 列`, number);
    }
    rows.push(Object.fromEntries(columns.map((c, i) => [c, cells[i]])));
  }
  if (!rows.length) throw new TableError("参数表没有数据行");
  return { columns, rows };
}

/** JSONL text → {columns, rows}: an object a line, the first one's keys are the columns. */
export function jsonlTable(text) {
  const rows = [];
  String(text).replace(/^\ufeff/, "").split("\n").forEach((line, index) => {
    if (!line.trim()) return;
    let row;
    try {
      row = JSON.parse(line);
    } catch {
      throw new TableError(`第 ${index + 1} 行不是合法的 JSON`, index + 1);
    }
    if (!row || typeof row !== "object" || Array.isArray(row)) throw new TableError(`第 ${index + 1} 行应为 JSON 对象`, index + 1);
    rows.push(row);
  });
  if (!rows.length) throw new TableError("参数表没有数据行");
  return { columns: Object.keys(rows[0]), rows };
}

/** A JSON array of row objects (a .json file) → {columns, rows}. */
export function jsonTable(text) {
  let rows;
  try {
    rows = JSON.parse(String(text).replace(/^\ufeff/, ""));
  } catch {
    throw new TableError("参数表不是合法的 JSON");
  }
  if (!Array.isArray(rows) || !rows.length || rows.some((r) => !r || typeof r !== "object" || Array.isArray(r))) {
    throw new TableError("参数表应为 JSON 数组，每一项是一行，如 [{\"6.text\": \"a cat\"}]");
  }
  return { columns: Object.keys(rows[0]), rows };
}

// --- the workflow ------------------------------------------------------------------------

/** Workflow text → {workflow} or {error}; the UI-format (not 导出 (API)) is said at once. */
export function parseWorkflow(text) {
  if (!String(text).trim()) return { error: "请粘贴或选择工作流（API 格式）" };
  let workflow;
  try {
    workflow = JSON.parse(text);
  } catch (error) {
    return { error: `工作流不是有效的 JSON：${error.message}` };
  }
  if (!workflow || typeof workflow !== "object" || Array.isArray(workflow)) {
    return { error: "工作流应为 JSON 对象：在 ComfyUI 中用“导出 (API)”得到的文件" };
  }
  if (Array.isArray(workflow.nodes) && "links" in workflow) {
    return { error: "这是 ComfyUI 界面格式的工作流；请在 ComfyUI 中用“导出 (API)”保存后再提交" };
  }
  return { workflow };
}

const isLink = (v) => Array.isArray(v) && v.length === 2 && typeof v[0] === "string" && Number.isInteger(v[1]);

/** The inputs a column can set: [{column: "6.text", node: "CLIPTextEncode", value}], links left out. */
export function inputsOf(workflow) {
  const out = [];
  for (const [id, node] of Object.entries(workflow || {})) {
    if (!node || typeof node !== "object" || !node.inputs || typeof node.inputs !== "object") continue;
    for (const [name, value] of Object.entries(node.inputs)) {
      if (!isLink(value)) out.push({ column: `${id}.${name}`, node: String(node.class_type || ""), value });
    }
  }
  return out;
}

/** The input a seed helper most likely means: the first seed / noise_seed that is a number. */
export function seedInput(workflow) {
  const found = inputsOf(workflow).find((i) => /(^|\.)(noise_)?seed$/.test(i.column) && typeof i.value === "number");
  return found ? found.column : "";
}

/** The workflow's value at `NODE_ID.input` (split on the last dot, as the server does). */
function current(workflow, column) {
  const dot = column.lastIndexOf(".");
  const node = dot > 0 && workflow ? workflow[column.slice(0, dot)] : null;
  return node && node.inputs ? node.inputs[column.slice(dot + 1)] : undefined;
}

/**
 * A grid value typed in as text → the JSON value to send: a number where the workflow has
 * a number, true/false where it has a boolean, else the text. Text that does not fit is
 * sent as text, for the server to name the cell.
 */
export function typedValue(workflow, column, text) {
  const was = current(workflow, column);
  const s = text.trim();
  if (typeof was === "number" && NUMBER.test(s)) return Number(s);
  if (typeof was === "boolean" && TRUE.has(s.toLowerCase())) return true;
  if (typeof was === "boolean" && FALSE.has(s.toLowerCase())) return false;
  return typeof was === "string" ? text : s;
}

/** Grid editor rows [{field, text}] → {field: [value…]}: one value a non-empty line. */
export function gridOf(workflow, rows) {
  const grid = {};
  for (const { field, text } of rows) {
    const column = field.trim();
    if (!column) continue;
    grid[column] = text.split(/\r?\n/).filter((line) => line.trim()).map((line) => typedValue(workflow, column, line));
  }
  return grid;
}

// --- the preview -------------------------------------------------------------------------

/** A grid as a table without building it: row i of the cartesian product, first column outermost. */
export function gridTable(grid) {
  const columns = Object.keys(grid);
  const sizes = columns.map((c) => grid[c].length);
  const count = columns.length ? sizes.reduce((a, b) => a * b, 1) : 0;
  const rowAt = (i) => {
    const row = {};
    let rest = i;
    for (let c = columns.length - 1; c >= 0; c -= 1) {
      row[columns[c]] = grid[columns[c]][rest % sizes[c]];
      rest = Math.floor(rest / sizes[c]);
    }
    return row;
  };
  return { columns, count, rowAt };
}

/**
 * The job as the server will expand it: each row `repeat` times in a row, then the seed
 * helper's value on every item. `table` is {columns, count, rowAt} or null (no table).
 * → {total, columns, rows: the first n items}.
 */
export function preview(table, { repeat = 1, seed = null, n = 5 } = {}) {
  const times = Math.max(1, Math.floor(Number(repeat)) || 1);
  const base = table || { columns: [], count: 1, rowAt: () => ({}) };
  const total = base.count * times;
  const columns = [...base.columns];
  if (seed && seed.field && !columns.includes(seed.field)) columns.push(seed.field);
  const rows = [];
  for (let k = 0; k < Math.min(n, total); k += 1) {
    const row = { ...base.rowAt(Math.floor(k / times)) };
    if (seed && seed.field) row[seed.field] = seed.mode === "increment" ? (Number(seed.start) || 0) + k : "随机";
    rows.push(row);
  }
  return { total, columns, rows };
}

/** {columns, rows} → the {columns, count, rowAt} preview() reads. */
export const rowsTable = ({ columns, rows }) => ({ columns, count: rows.length, rowAt: (i) => rows[i] });
