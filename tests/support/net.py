"""Ports and waiting: every wait in the tests is a condition with a deadline."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Port blocks for instances come from a slice of ports that this process alone hands out:
# several test processes run at once (pytest-xdist workers, the Ray pass beside the main
# pass, other checkouts on the same machine), and two of them must not pick overlapping
# blocks. The slices lie below the kernel's ephemeral range (32768+), so no outgoing
# connection takes one of their ports either, and above Ray's default worker ports (10002-19999).
# A process owns a slice while it holds an flock on the slice's file; the lock goes away
# with the process, so a crashed run leaves nothing to clean up.
SLICE_BASE, SLICE_SIZE, SLICES = 20000, 2048, 6
_LOCK_DIR = os.path.join(tempfile.gettempdir(), "comfyhub-test-ports")
_slice: dict = {}


def _claim_slice() -> tuple[int, int] | None:
    """(first, end) of a slice no other live process holds; None when all are taken."""
    if "range" not in _slice:
        _slice["range"] = None
        for index in range(SLICES):
            try:
                os.makedirs(_LOCK_DIR, exist_ok=True)
                fd = os.open(os.path.join(_LOCK_DIR, f"slice-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                continue  # e.g. made by another user: this slice is not ours to take
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _slice["fd"] = fd  # held (never closed) for the life of this process
            first = SLICE_BASE + index * SLICE_SIZE
            _slice["range"] = (first, first + SLICE_SIZE)
            _slice["cursor"] = first
            break
    return _slice["range"]


def free_port_block(size: int) -> tuple[int, int]:
    """A run of `size` consecutive ports that are free right now and that no other test
    process hands out (from this process's slice; a random free run when none is left)."""
    owned = _claim_slice()
    if owned is not None:
        first, end = owned
        for _ in range((end - first) // size):
            low = _slice["cursor"]
            if low + size > end:  # wrap around: the blocks at the start were handed out long ago
                low = first
            _slice["cursor"] = low + size
            if all(_free(p) for p in range(low, low + size)):
                return low, low + size - 1
    for _ in range(200):
        low = free_port()
        if low + size > 65000:
            continue
        if all(_free(p) for p in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll an (async or sync) predicate until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for_sync(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
