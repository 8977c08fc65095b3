// The tab 数据生成 opens at once, in the click itself (so pop-up blockers allow it). It says
// "启动中" until the instance is ready; then the workbench sends it to the instance.

/** Open the pending tab for project `p`; null when the browser refused to. */
export function openPendingTab(p) {
  let tab = null;
  try {
    tab = window.open("", "_blank");
  } catch {
    tab = null;
  }
  if (!tab) return null;
  try {
    tab.opener = null;
    const doc = tab.document;
    doc.documentElement.lang = "zh-CN";
    doc.title = "ComfyUI 启动中…";
    const style = doc.createElement("style");
    style.textContent = "body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;"
      + "font-family:system-ui,-apple-system,'PingFang SC','Microsoft YaHei','Noto Sans CJK SC',sans-serif;"
      + "background:#f5f7fa;color:#1f2937}main{text-align:center;padding:24px}h1{font-size:20px;margin:0 0 8px}"
      + "p{color:#6b7280;margin:0}";
    doc.head.append(style);
    const box = doc.createElement("main");
    const title = doc.createElement("h1");
    title.textContent = "ComfyUI 启动中…";
    const text = doc.createElement("p");
    text.textContent = `项目“${p.name}”的 ComfyUI 就绪后，本页会自动打开它。`;
    box.append(title, text);
    doc.body.replaceChildren(box);
  } catch {
    /* the tab is still usable for navigation */
  }
  return tab;
}
