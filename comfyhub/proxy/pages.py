"""The small Chinese pages a browser is shown when the proxy cannot pass it on."""

from __future__ import annotations

import html

_TEMPLATE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · comfyhub</title>
<style>
 body{{font-family:system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;background:#f5f6f8;color:#1f2328;
      display:flex;min-height:100vh;align-items:center;justify-content:center;margin:0}}
 main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:32px 40px;max-width:440px}}
 h1{{font-size:20px;margin:0 0 12px}} p{{color:#57606a;line-height:1.6}}
 a{{display:inline-block;margin-top:12px;background:#2f6feb;color:#fff;padding:8px 18px;border-radius:6px;
   text-decoration:none}}
</style>{refresh}</head>
<body><main><h1>{title}</h1><p>{message}</p><a href="/">返回个人工作台</a></main></body></html>
"""

PAGES = {
    "starting": ("ComfyUI 启动中", "实例正在启动，页面会自动刷新。", True),
    "offline": ("ComfyUI 连接中断", "实例暂时无法连接。请回到工作台，再次点击“数据生成”重新连接。", False),
    "failed": ("ComfyUI 启动失败", "实例启动失败。请回到工作台查看原因和日志。", False),
    "stopped": ("ComfyUI 未启动", "该项目的 ComfyUI 当前未运行。请回到工作台点击“数据生成”启动。", False),
    None: ("ComfyUI 未启动", "该项目的 ComfyUI 当前未运行。请回到工作台点击“数据生成”启动。", False),
    "unreachable": ("ComfyUI 连接中断", "无法连接到实例，它可能刚刚退出。请回到工作台重新打开。", False),
}


def error_page(title: str, message: str, refresh: bool = False) -> bytes:
    meta = '<meta http-equiv="refresh" content="3">' if refresh else ""
    return _TEMPLATE.format(title=html.escape(title), message=html.escape(message), refresh=meta).encode()
