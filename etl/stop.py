"""Stopping a pass from outside: SIGTERM, SIGINT, or the daemon shutting down.

A ``StopRequest`` is the pass's cancellation event with the name of whoever asked, so that the run
records why it stopped ("stopped by SIGTERM after 27 of 100 connections").
``stop_on_signals`` turns the first SIGINT or SIGTERM of a one-shot command into such a request: no
new request is sent, those in flight have ``grace`` seconds, and then the command is interrupted
where it is; what was received is stored either way. A second signal interrupts it at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class StopRequest(threading.Event):
    """Set to stop a pass: no new request; requests in flight finish and what was received is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        """Ask the pass to stop, saying who asks (the first reason given is kept, also when the pass was
        already stopping for a reason of its own, such as the outage guard)."""
        if self.reason is None:
            self.reason = reason
        self.set()


# An interruption that comes while the main thread writes to the database waits for the write to end:
# a batch is then either stored whole (and not written again) or not at all.
_shield = {"depth": 0, "due": False}


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """In the main thread, hold back the interruption of ``stop_on_signals`` until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _shield["depth"] += 1
    try:
        yield
    except BaseException:  # the block failed on its own: that error goes on, the run ends with it
        _shield["depth"] -= 1
        raise
    _shield["depth"] -= 1
    if not _shield["depth"] and _shield["due"]:
        _shield["due"] = False
        raise KeyboardInterrupt


def _interrupt() -> None:
    """Raise KeyboardInterrupt now, or when the main thread leaves its shielded block."""
    if _shield["depth"]:
        _shield["due"] = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, *, grace: float) -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM sets ``stop``; after ``grace`` seconds, or at a second
    signal, KeyboardInterrupt is raised in the main thread. Outside the main thread (tests invoking a
    command from a thread), signals are left as they are."""
    timers: list[threading.Timer] = []
    state = {"signalled": False, "done": False}
    lock = threading.Lock()

    def interrupt_main() -> None:  # a real signal, to the main thread: it also cuts a blocking read short
        with lock:
            if not state["done"]:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if state["signalled"]:  # the second signal, or the grace is over
            _interrupt()
            return
        state["signalled"] = True
        stop.request(name)
        log.warning("%s: stopping; no new request is sent, those in flight have %gs, then what was received is "
                    "stored (a second signal stops at once)", name, grace)
        timer = threading.Timer(grace, interrupt_main)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        with lock:
            state["done"] = True
        _shield["due"] = False
        for timer in timers:
            timer.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)
