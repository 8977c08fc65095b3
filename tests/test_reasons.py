"""Reason codes: every code has words, and the words never decide behaviour."""

from __future__ import annotations

import pytest

from comfyhub.reasons import Reason, words


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_words(reason):
    params = dict(actor="root", limit=240, what="未就绪", exit="退出码 1", detail="x", window=600, attempts=5)
    said = words(reason, **params)
    assert said and "{" not in said


def test_codes_are_short_enough_for_their_column():
    assert all(len(reason.value) <= 32 for reason in Reason)  # comfyui_services.reason is String(32)


def test_admin_stop_names_the_admin():
    assert words(Reason.ADMIN, actor="root") == "管理员 root 停止"
