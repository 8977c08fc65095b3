// One output in a dialog: the file (image, video, audio or a download), what made it
// (prompts, seed, steps, cfg, sampler, model, the whole graph), and its curation:
// 通过 / 不通过 / 清除, tags, note, 删除. ← and → (or the buttons) walk the loaded list.

import { del, get, put } from "./api.js";
import { confirmDialog, modal } from "./dialogs.js";
import { copyText, h, setText, show, toast } from "./dom.js";
import { formatBytes, formatDateTime, parseTime } from "./format.js";
import { MARK_WORDS, keptFor, outputUrl } from "./gallery-tile.js";

const STATUS_WORDS = { success: "成功", error: "失败", interrupted: "已中断" };

function media(projectId, item) {
  const src = outputUrl(projectId, item.id, "file");
  if (item.media_type === "image") return h("img", { src, alt: item.prompt ? item.prompt.slice(0, 200) : item.filename });
  if (item.media_type === "video") return h("video", { src, controls: true, preload: "metadata", playsinline: true });
  if (item.media_type === "audio") return h("audio", { src, controls: true, preload: "metadata" });
  return h("p", { class: "muted", text: "此类型的文件无法在页面中预览，请下载查看。" });
}

function facts(item) {
  const rows = [
    ["文件", item.subfolder ? `${item.subfolder}/${item.filename}` : item.filename],
    ["创建时间", formatDateTime(parseTime(item.created_at))],
    ["状态", STATUS_WORDS[item.status] || item.status],
    ["尺寸", item.width && item.height ? `${item.width} × ${item.height}` : null],
    ["大小", item.size ? formatBytes(item.size) : null],
    ["种子", item.seed],
    ["步数", item.steps],
    ["CFG", item.cfg],
    ["采样器", item.sampler],
    ["调度器", item.scheduler],
    ["模型", item.model],
  ];
  return h("dl", { class: "meta detail-facts" },
    rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([label, value]) => h("div", { class: "meta-row", dataset: { field: label } }, h("dt", { text: label }), h("dd", { text: String(value) }))));
}

function textBlock(title, text, className) {
  if (!text) return null;
  return h("section", { class: "detail-block" }, h("h3", { text: title }), h("p", { class: className, text }));
}

function graphBlock(graph) {
  const json = graph ? JSON.stringify(graph, null, 2) : "";
  const pre = h("pre", { class: "graph-json", tabindex: "0", "aria-label": "工作流 JSON", text: json || "（没有记录工作流）" });
  const copy = h("button", { type: "button", class: "btn btn-sm", disabled: !json }, "复制");
  copy.addEventListener("click", async () => {
    toast((await copyText(json, pre.parentElement)) ? "已复制工作流 JSON" : "复制失败，请手动选择文本复制", "info");
  });
  return h("section", { class: "detail-block" },
    h("div", { class: "block-head" }, h("h3", { text: "工作流（API 格式）" }), copy),
    pre);
}

/** The curation controls for `item`; `save(changes)` PUTs them and returns the new detail. */
function curation(item, { save, remove }) {
  const markButtons = [["pass", "通过"], ["fail", "不通过"]].map(([value, label]) =>
    h("button", {
      type: "button",
      class: `btn btn-sm mark-btn mark-${value}`,
      "aria-pressed": String(item.mark === value),
      onclick: () => save({ mark: value }),
    }, label));
  const clear = h("button", { type: "button", class: "btn btn-sm btn-ghost", disabled: !item.mark, onclick: () => save({ mark: null }) }, "清除");

  const tags = [...(item.tags || [])];
  const chips = tags.map((tag) =>
    h("span", { class: "chip" }, tag,
      h("button", { type: "button", class: "chip-x", "aria-label": `移除标签 ${tag}`, onclick: () => save({ tags: tags.filter((t) => t !== tag) }) }, "×")));
  const tagInput = h("input", { type: "text", maxlength: "64", placeholder: "新标签", "aria-label": "新标签", autocomplete: "off" });
  const addTag = () => {
    const tag = tagInput.value.trim();
    if (tag && !tags.includes(tag)) save({ tags: [...tags, tag] });
  };
  tagInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addTag();
    }
  });

  const note = h("textarea", { rows: "2", maxlength: "2000", "aria-label": "备注", placeholder: "备注" });
  note.value = item.note || "";
  const saveNote = h("button", { type: "button", class: "btn btn-sm", onclick: () => save({ note: note.value }) }, "保存备注");

  return h("section", { class: "detail-block curation" },
    h("h3", { text: "标注" }),
    h("div", { class: "mark-row", role: "group", "aria-label": "标注" }, markButtons, clear),
    h("div", { class: "tag-row" }, chips, tagInput,
      h("button", { type: "button", class: "btn btn-sm", onclick: addTag }, "加标签")),
    h("div", { class: "note-row" }, note, saveNote),
    h("div", { class: "danger-row" },
      h("button", { type: "button", class: "btn btn-sm btn-ghost btn-ghost-danger", onclick: remove }, "删除")));
}

/**
 * Open output `id` of the loaded `list()` in a dialog.
 * `onChanged(item)`: it was annotated; `onDeleted(id)`: it went to the trash.
 * `within`: the view's scope; the dialog closes when the view ends.
 */
export function openDetail({ projectId, id, list, canEdit, trashDays, within, onChanged, onDeleted }) {
  return modal({
    within,
    title: "产出详情",
    className: "dialog-wide gallery-detail",
    build: (close, scope) => {
      let currentId = id;
      let item = null;
      let seq = 0;
      const position = h("span", { class: "muted small" });
      const prev = h("button", { type: "button", class: "btn btn-sm", "aria-label": "上一个", onclick: () => step(-1) }, "‹ 上一个");
      const next = h("button", { type: "button", class: "btn btn-sm", "aria-label": "下一个", onclick: () => step(1) }, "下一个 ›");
      const download = h("a", { class: "btn btn-sm", download: "" }, "下载");
      const status = h("p", { class: "muted", role: "status", text: "正在加载…" });
      const content = h("div", { class: "detail-layout" });
      const root = h("div", { class: "dialog-body" },
        h("div", { class: "detail-nav" }, prev, position, next, h("span", { class: "nav-spacer" }), download),
        status,
        content);

      const indexOf = () => list().findIndex((x) => x.id === currentId);
      // The list as last seen non-empty: a filter change empties the view's list while it
      // reloads, and a delete at that moment still moves on to a neighbour.
      let seen = [];
      function syncNav() {
        const items = list();
        if (items.length) seen = items.slice();
        const at = indexOf();
        prev.disabled = at <= 0;
        next.disabled = at < 0 || at >= items.length - 1;
        setText(position, at >= 0 ? `${at + 1} / ${items.length}` : "");
      }

      function render() {
        download.href = outputUrl(projectId, item.id, "file");
        download.setAttribute("download", item.filename);
        const error = item.status !== "success" && item.error
          ? h("p", { class: "failure-reason detail-error", role: "alert", text: item.error }) : null;
        const mark = item.mark ? h("span", { class: `tile-mark mark-${item.mark}`, text: MARK_WORDS[item.mark] }) : null;
        content.replaceChildren(
          h("div", { class: "detail-media", dataset: { kind: item.media_type } }, media(projectId, item)),
          h("div", { class: "detail-info" },
            h("div", { class: "detail-title" }, h("strong", { text: item.filename }), mark),
            error,
            textBlock("提示词", item.prompt, "prompt-text"),
            textBlock("反向提示词", item.negative_prompt, "prompt-text negative"),
            facts(item),
            item.note && !canEdit ? textBlock("备注", item.note, "note") : null,
            canEdit ? curation(item, { save, remove }) : null,
            graphBlock(item.graph)));
        syncNav();
      }

      async function load(targetId) {
        currentId = targetId;
        const mine = ++seq;
        syncNav();
        setText(status, "正在加载…");
        show(status, true);
        try {
          const detail = await get(outputUrl(projectId, targetId));
          if (mine !== seq || scope.disposed) return;
          item = detail;
          show(status, false);
          render();
        } catch (error) {
          if (mine !== seq || scope.disposed) return;
          setText(status, `读取失败：${error.message}`);
        }
      }

      function step(delta) {
        const items = list();
        const at = indexOf();
        const target = items[at + delta];
        if (at >= 0 && target) load(target.id);
      }

      async function save(changes) {
        if (!item) return;
        try {
          item = await put(outputUrl(projectId, item.id), changes);
          if (scope.disposed) return;
          onChanged(item);
          render();
        } catch (error) {
          if (error.status !== 401) toast(error.message, "error");
        }
      }

      async function remove() {
        if (!item) return;
        const ok = await confirmDialog({
          title: "删除产出",
          message: `确定删除“${item.filename}”吗？文件会移入实例的回收站（.trash/）${keptFor(trashDays)}，期间可以恢复。`,
          confirmText: "删除",
          danger: true,
        });
        if (!ok || scope.disposed) return;
        const gone = item.id;
        const items = list().length ? list() : seen;
        const at = items.findIndex((x) => x.id === gone);
        const neighbour = at >= 0 ? items[at + 1] || items[at - 1] || null : null;
        try {
          const answer = await del(outputUrl(projectId, gone), { envelope: true });
          toast(answer.msg || "已删除", "success");
          onDeleted(gone);
          if (scope.disposed) return;
          if (neighbour) load(neighbour.id);
          else close();
        } catch (error) {
          if (error.status !== 401) toast(error.message, "error");
        }
      }

      scope.listen(document, "keydown", (event) => {
        if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
        if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
        const target = event.target;
        if (!(target === document.body || root.closest("dialog")?.contains(target))) return;
        if (target.closest && target.closest("input, textarea, select, video, audio, [contenteditable]")) return;
        event.preventDefault();
        step(event.key === "ArrowLeft" ? -1 : 1);
      });
      load(id);
      return root;
    },
  });
}
