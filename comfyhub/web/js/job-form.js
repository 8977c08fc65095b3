// 新建批量任务: the form in a dialog. The workflow is pasted or read from a .json file;
// the parameters come from a grid, a pasted CSV table or an uploaded CSV/JSONL file; the
// preview (the first items and the total) is computed here, and the server checks every
// cell on submit: its message (naming the row and the column) is shown above the buttons.

import { post } from "./api.js";
import { modal } from "./dialogs.js";
import { h, setText, show } from "./dom.js";
import { gridEditor } from "./job-grid.js";
import { MAX_ITEMS, csvTable, gridOf, gridTable, inputsOf, jsonTable, jsonlTable, parseWorkflow, preview, rowsTable,
  seedInput } from "./job-params.js";

const SOURCES = { grid: "网格", paste: "粘贴表格", upload: "上传文件", none: "不用参数表" };
const PREVIEW_ROWS = 5;
const SHOWN_INPUTS = 16;

/** A file's text, read with a FileReader (UTF-8; a BOM is dropped by the parsers). */
function readText(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error || new Error("读取失败"));
    reader.readAsText(file);
  });
}

/** An uploaded table for the preview: {columns, count, rowAt}, or {warn}. */
function parsedFile(kind, text) {
  try {
    return rowsTable({ csv: csvTable, jsonl: jsonlTable, table: jsonTable }[kind](text));
  } catch (err) {
    return { warn: err.message };
  }
}

/** Which field of the body an uploaded file goes to, by its name. */
const kindOf = (name) => (/\.(jsonl|ndjson)$/i.test(name) ? "jsonl" : /\.json$/i.test(name) ? "table" : "csv");

const field = (id, label, input, help) => h("div", { class: "field" }, h("label", { for: id, text: label }), input,
  help ? h("p", { class: "help", text: help }) : null);

/** Open the form for project `projectId`; resolves with {id, total, columns, name} once created. */
export function jobDialog({ projectId, within }) {
  const listId = "jf-inputs";
  let workflow = null;
  let source = "grid";
  let upload = null; // {kind, text, table}: a file is read and parsed once, when chosen

  const name = h("input", { id: "jf-name", maxlength: "100", autocomplete: "off", placeholder: "批量生成", autofocus: true });
  const workflowText = h("textarea", { id: "jf-workflow", rows: "6", spellcheck: "false", class: "mono",
    placeholder: "{\"3\": {\"class_type\": \"KSampler\", \"inputs\": {…}}, …}" });
  const workflowFile = h("input", { id: "jf-workflow-file", type: "file", accept: ".json,application/json" });
  const workflowInfo = h("p", { class: "help workflow-info", "aria-live": "polite" });
  const datalist = h("datalist", { id: listId });

  const grid = gridEditor({ listId, onChange: () => update() });
  const csvText = h("textarea", { id: "jf-csv", rows: "6", spellcheck: "false", class: "mono",
    placeholder: "6.text,1.color\na cat,0\n\"a dog, running\",255" });
  const paramsFile = h("input", { id: "jf-params-file", type: "file", accept: ".csv,.jsonl,.ndjson,.json,.txt,text/csv" });
  const uploadInfo = h("p", { class: "help", "aria-live": "polite" });
  const panels = {
    grid: h("div", { class: "source-panel" }, grid.el),
    paste: h("div", { class: "source-panel" }, field(csvText.id, "参数表（CSV 文本）", csvText,
      "首行为列名，之后每行一项。含逗号、引号或换行的格整格加引号，格内的引号写两遍。可从 Excel 复制后粘贴为 CSV。")),
    upload: h("div", { class: "source-panel" }, field(paramsFile.id, "参数文件（CSV、JSONL 或 JSON）", paramsFile,
      "CSV：首行为列名（Excel 请另存为“CSV UTF-8”）；JSONL：每行一个对象，如 {\"6.text\": \"a cat\", \"1.color\": 0}。"), uploadInfo),
    none: h("div", { class: "source-panel" }, h("p", { class: "help", text: "每一项都用工作流原样运行；请设置重复次数或种子。" })),
  };
  const sourceButtons = Object.entries(SOURCES).map(([key, label]) => h("button", { type: "button", class: "seg",
    dataset: { source: key }, onclick: () => { source = key; update(); } }, label));

  const repeat = h("input", { id: "jf-repeat", type: "number", min: "1", max: String(MAX_ITEMS), step: "1", value: "1" });
  const seedOn = h("input", { id: "jf-seed-on", type: "checkbox" });
  const seedField = h("input", { id: "jf-seed-field", list: listId, autocomplete: "off", spellcheck: "false", placeholder: "如 3.seed" });
  const seedMode = h("select", { id: "jf-seed-mode" }, h("option", { value: "random" }, "随机"), h("option", { value: "increment" }, "递增"));
  const seedStart = h("input", { id: "jf-seed-start", type: "number", min: "0", step: "1", value: "0" });
  const seedStartField = field(seedStart.id, "起始值", seedStart);
  const seedFields = h("div", { class: "seed-fields" }, field(seedField.id, "种子输入", seedField),
    field(seedMode.id, "方式", seedMode), seedStartField);

  const total = h("p", { class: "preview-total", id: "jf-total" });
  const previewWarn = h("p", { class: "field-error", role: "status", hidden: true });
  const previewTable = h("table", { class: "table preview-table" });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });

  /** The parameters as a table for the preview, or a warning found on the way. */
  function table() {
    if (source === "grid") {
      const g = gridTable(gridOf(workflow, grid.rows()));
      return g.columns.length ? g : { warn: "在网格中填写至少一列：字段和它的取值" };
    }
    if (source === "none") return null;
    try {
      if (source === "paste") return csvText.value.trim() ? rowsTable(csvTable(csvText.value)) : { warn: "粘贴 CSV 参数表" };
      if (!upload) return { warn: "选择参数文件" };
      return upload.table;
    } catch (err) {
      return { warn: err.message };
    }
  }

  const seed = () => (seedOn.checked && seedField.value.trim()
    ? { field: seedField.value.trim(), mode: seedMode.value, start: Math.max(0, Math.floor(Number(seedStart.value)) || 0) }
    : null);

  function update() {
    for (const b of sourceButtons) b.setAttribute("aria-pressed", String(b.dataset.source === source));
    for (const [key, panel] of Object.entries(panels)) show(panel, key === source);
    show(seedFields, seedOn.checked);
    show(seedStartField, seedMode.value === "increment");
    const t = table();
    const shownTable = t && t.warn ? null : t;
    setText(previewWarn, t && t.warn ? t.warn : "");
    show(previewWarn, Boolean(t && t.warn));
    const p = preview(shownTable, { repeat: repeat.value, seed: seed(), n: PREVIEW_ROWS });
    const known = !(t && t.warn);
    setText(total, known ? `共 ${p.total.toLocaleString("zh-CN")} 项${p.total > MAX_ITEMS ? `（超过上限 ${MAX_ITEMS.toLocaleString("zh-CN")}，服务器会拒绝）` : ""}` : "共 — 项");
    total.dataset.total = known ? String(p.total) : "";
    previewTable.replaceChildren();
    show(previewTable, known && p.columns.length > 0 && p.rows.length > 0);
    if (known && p.columns.length) {
      previewTable.append(
        h("thead", {}, h("tr", {}, h("th", { text: "#" }), p.columns.map((c) => h("th", { text: c })))),
        h("tbody", {}, p.rows.map((row, i) => h("tr", {}, h("td", { text: String(i + 1) }),
          p.columns.map((c) => h("td", { text: typeof row[c] === "string" ? row[c] : JSON.stringify(row[c]) }))))));
    }
  }

  function readWorkflow() {
    workflowText.removeAttribute("aria-invalid");
    const parsed = parseWorkflow(workflowText.value);
    workflow = parsed.workflow || null;
    if (!workflow) {
      setText(workflowInfo, workflowText.value.trim() ? parsed.error : "");
      datalist.replaceChildren();
    } else {
      const inputs = inputsOf(workflow);
      datalist.replaceChildren(...inputs.map((i) => h("option", { value: i.column }, i.node)));
      const names = inputs.slice(0, SHOWN_INPUTS).map((i) => i.column).join("、");
      setText(workflowInfo, `已识别 ${Object.keys(workflow).length} 个节点。可设置的列：${names || "（没有）"}${inputs.length > SHOWN_INPUTS ? " …" : ""}`);
      if (!seedField.value) seedField.value = seedInput(workflow);
    }
    update();
  }

  return modal({
    title: "新建批量任务",
    className: "dialog-wide job-dialog",
    within,
    build: (close) => {
      workflowText.addEventListener("input", readWorkflow);
      workflowFile.addEventListener("change", async () => {
        const file = workflowFile.files[0];
        if (!file) return;
        try {
          workflowText.value = await readText(file);
        } catch (err) {
          setText(workflowInfo, `读取文件失败：${err.message}`);
          return;
        }
        readWorkflow();
      });
      paramsFile.addEventListener("change", async () => {
        const file = paramsFile.files[0];
        upload = null;
        setText(uploadInfo, "");
        if (file) {
          try {
            const kind = kindOf(file.name);
            const text = await readText(file);
            upload = { kind, text, table: parsedFile(kind, text) };
            setText(uploadInfo, `已读取 ${file.name}（${upload.kind === "jsonl" ? "JSONL" : upload.kind === "table" ? "JSON" : "CSV"}）`);
          } catch (err) {
            setText(uploadInfo, `读取文件失败：${err.message}`);
          }
        }
        update();
      });
      for (const input of [csvText, repeat, seedField, seedStart]) input.addEventListener("input", () => update());
      for (const input of [seedOn, seedMode]) input.addEventListener("change", () => update());

      const submit = h("button", { type: "submit", class: "btn btn-primary" }, "创建任务");
      const form = h("form", { class: "dialog-body job-form", novalidate: true },
        field(name.id, "名称", name),
        h("fieldset", { class: "form-group" }, h("legend", { text: "工作流" }),
          field(workflowText.id, "工作流（API 格式 JSON）", workflowText,
            "在 ComfyUI 的设置中开启“开发者模式”（Dev mode），再用菜单“导出 (API)”保存工作流，粘贴其内容或选择该文件。文件中的每个键（如 \"6\"）就是节点 ID。"),
          field(workflowFile.id, "或选择 .json 文件", workflowFile),
          workflowInfo, datalist),
        h("fieldset", { class: "form-group" }, h("legend", { text: "参数" }),
          h("p", { class: "help", text: "每一列设置一个节点输入，列名写作 NODE_ID.input：如 6.text 是节点 6 的 text 输入，3.seed 是节点 3 的 seed。每一项都要填写每一列；要沿用工作流中的值，就不要写这一列。" }),
          h("div", { class: "segmented", role: "group", "aria-label": "参数来源" }, sourceButtons),
          Object.values(panels),
          h("div", { class: "inline-fields" }, field(repeat.id, "重复次数", repeat, "每一行（或组合）连续运行几次")),
          h("div", { class: "seed-toggle" }, seedOn, h("label", { for: seedOn.id, text: "自动设置种子（让重复的项各不相同）" })),
          seedFields),
        h("section", { class: "job-preview", "aria-label": "预览", "aria-live": "polite" },
          h("h3", { text: "预览" }), total, previewWarn, h("div", { class: "table-wrap" }, previewTable),
          h("p", { class: "help", text: `只显示前 ${PREVIEW_ROWS} 项，在本页计算；提交时服务器会逐格检查每个值（节点、输入、类型和范围），有错会指出第几行哪一列。` })),
        error,
        h("div", { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", onclick: () => close(null) }, "取消"),
          submit));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const body = requestBody();
        if (body.error) {
          fail(body.error, body.at);
          return;
        }
        show(error, false);
        submit.disabled = true;
        try {
          const created = await post(`/api/projects/${projectId}/jobs`, body);
          close({ ...created, name: body.name || "批量生成" });
        } catch (err) {
          submit.disabled = false;
          if (err.status === 401) return;
          fail(err.message);
          const column = err.data && err.data.column;
          if (column && source === "grid") grid.mark(column); // the message names it; the field is pointed at too
        }
      });
      update();
      return form;
    },
  });

  /** The server's (or this page's) reason above the buttons; `at`: the input it points to. */
  function fail(message, at = null) {
    setText(error, message);
    show(error, true);
    if (at) {
      at.setAttribute("aria-invalid", "true");
      at.focus();
    }
    error.scrollIntoView({ block: "nearest" });
  }

  /** The JSON body for POST …/jobs, or {error, at} when it cannot be sent as it is. */
  function requestBody() {
    const parsed = parseWorkflow(workflowText.value);
    if (parsed.error) return { error: parsed.error, at: workflowText };
    const body = { workflow: parsed.workflow, repeat: Math.max(1, Math.floor(Number(repeat.value)) || 1) };
    if (name.value.trim()) body.name = name.value.trim();
    if (seedOn.checked) {
      if (!seedField.value.trim()) return { error: "请填写种子输入，如 3.seed", at: seedField };
      body.seed = seed();
    }
    if (source === "grid") {
      const g = gridOf(parsed.workflow, grid.rows());
      if (!Object.keys(g).length) return { error: "在网格中填写至少一列：字段和它的取值" };
      body.grid = g;
    } else if (source === "paste") {
      if (!csvText.value.trim()) return { error: "请粘贴 CSV 参数表", at: csvText };
      body.csv = csvText.value;
    } else if (source === "upload") {
      if (!upload) return { error: "请选择参数文件", at: paramsFile };
      if (upload.kind === "table") {
        try {
          body.table = JSON.parse(upload.text.replace(/^\ufeff/, ""));
        } catch {
          return { error: "参数文件不是合法的 JSON", at: paramsFile };
        }
      } else body[upload.kind] = upload.text;
    }
    return body;
  }
}
