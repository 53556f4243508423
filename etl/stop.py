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
        """Ask the pass to stop, saying who asks (the first reason given is kept)."""
        if not self.is_set():
            self.reason = reason
            self.set()


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, *, grace: float) -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM sets ``stop``; after ``grace`` seconds, or at a second
    signal, KeyboardInterrupt is raised in the main thread. Outside the main thread (tests invoking a
    command from a thread), signals are left as they are."""
    timers: list[threading.Timer] = []

    def interrupt_main() -> None:  # a real signal, to the main thread: it also cuts a blocking read short
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            raise KeyboardInterrupt
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
        for timer in timers:
            timer.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)
