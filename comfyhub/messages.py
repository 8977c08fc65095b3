"""The Chinese messages both front doors answer with, kept in one place.

The /api routes and the /comfy/ gateway refuse the same callers for the same reasons;
a script that talks to both must read the same `msg` from each. They are independent
siblings (neither imports the other), so the words live here, below both.
"""

NOT_LOGGED_IN = "未登录或登录已过期"
FORBIDDEN = "无操作权限"
CROSS_SITE = "跨站请求被拒绝"
PROJECT_NOT_FOUND = "项目不存在"
