"""Signals to the trigger itself, held off while a step must not be cut in half.

Ctrl-C, SIGTERM or an alarm normally interrupt the trigger wherever it is, and the cleanup
(ptrace.Tracee's detach) then puts every thread back. Two steps cannot be interrupted that way:
resuming a thread and recording that it runs (the cleanup would treat a running thread as
stopped), and a call into the runtime (abandoned halfway, it would leave its lock held in the
process). Signals that arrive meanwhile are delivered as soon as the step is over.
"""

from __future__ import annotations

import signal

# signal.pthread_sigmask without the wrapper that turns every signal of the old mask into an
# enum member: this runs at each resume of a traced thread, dozens of times per process.
from _signal import pthread_sigmask
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def held(signals: set[signal.Signals]) -> Iterator[None]:
    """`signals` wait, in this thread, until the block has run."""
    old = pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        pthread_sigmask(signal.SIG_SETMASK, old)
