"""One background job at a time for the widget: a ``thread_worker`` with progress, Cancel, and
errors shown once as a notification (never raised into Qt)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

from ..errors import InstannoError


class _Signals(QObject):
    progress = Signal(int, int)  # emitted from the worker thread, delivered in the GUI thread


def error_message(err: BaseException) -> str:
    """What the user reads for ``err``: our own message, or the exception's type and text."""
    return str(err) if isinstance(err, InstannoError) else f"{type(err).__name__}: {err}"


def shows_errors(method: Callable[..., Any], status: Callable[[str], None] | None = None
                 ) -> Callable[..., Any]:
    """A widget action whose ``InstannoError`` is shown once as an error notification, and given
    to ``status`` (the widget's info line, so that it never keeps a stale message), instead of
    reaching Qt; the action then returns None."""
    @functools.wraps(method)
    def action(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except InstannoError as err:
            show_error(str(err))
            if status is not None:
                status(str(err))
            return None

    return action


class JobRunner:
    """Runs ``work(report, cancelled)`` in a thread and ``done(result)`` in the GUI thread.

    ``bar`` (a magicgui ProgressBar, beside Cancel) follows ``report(done, total)``; napari's
    activity dock is left out: its spinner repaints the window while a job runs, which on a
    2-core CPU slowed a first Find similar by up to 1.5 s (benchmarks/RESULTS.md, session 12);
    ``status(text)`` receives one line per state change; ``busy_changed(busy)`` lets the widget
    enable or disable its buttons. A cancelled job's result is dropped. A ``background`` job
    (work the user did not ask for, such as outlining the shapes below the shown score) leaves
    the buttons enabled, and a new job cancels it instead of waiting for it. After ``close``
    (the widget is gone) no callback touches the widget.
    """

    def __init__(self, bar: Any, status: Callable[[str], None],
                 busy_changed: Callable[[bool], None]) -> None:
        self.signals = _Signals()
        self.signals.progress.connect(self._on_progress)
        self._bar, self._status, self._busy_changed = bar, status, busy_changed
        self._worker: Any = None
        self._background = self._returned = self._closed = False
        self._stop = threading.Event()
        self.result: Any = None  # the last finished job's result, and the error it ended with
        self.error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a job (background ones included) is running."""
        return self._worker is not None

    @property
    def free(self) -> bool:
        """Whether ``start`` would start a job now (none running, a background one, or one in
        its ``done``)."""
        return self._worker is None or self._background or self._returned

    def start(self, what: str, work: Callable[..., Any], done: Callable[[Any], None],
              background: bool = False, note: str = "") -> Any:
        """Start a job and return its worker; ``InstannoError`` if a foreground job is running
        (a background one is cancelled: its result is dropped). A job's ``done`` may start the
        next one. ``note`` follows ``what`` on the status line while the job runs."""
        if self._closed:
            raise InstannoError("the widget is closed")
        if self._worker is not None:
            if not (self._background or self._returned):
                raise InstannoError("still working: wait, or press Cancel")
            self._stop.set()  # a background job, or one that has returned (started from its done)
            if not self._background and background:
                self._busy_changed(False)
        stop = self._stop = threading.Event()
        self.result, self.error = None, None
        emit = self.signals.progress.emit

        def report(n: int, total: int) -> None:
            if not stop.is_set():
                emit(n, total)

        def returned(result: Any) -> None:
            if not stop.is_set():
                self.result, self._returned = result, True
                done(result)

        def errored(err: BaseException) -> None:
            if worker is self._worker:  # a superseded job's error is no news
                self._on_error(what, err)

        worker = create_worker(work, report, stop.is_set, _start_thread=False, _connect={
            "returned": returned, "errored": errored,  # errors shown instead of re-raised
            "finished": lambda: self._on_finished(worker, stop),
        })
        self._worker, self._background, self._returned = worker, background, False
        self._bar.value, self._bar.max = 0, 0
        self._status(f"{what}{note}...")
        if not background:
            self._busy_changed(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job at its next step; its results are dropped."""
        self._stop.set()

    def close(self) -> None:
        """The widget is going away: cancel the job; from now on callbacks leave the widget alone."""
        self._closed = True
        self._stop.set()

    def _on_progress(self, done: int, total: int) -> None:
        if self._closed:
            return
        self._bar.max, self._bar.value = max(total, 1), min(done, max(total, 1))

    def wait(self, timeout: float = 120.0) -> Any:
        """Block (keeping Qt's events flowing) until the running foreground job ends; its result
        (a background job it started, such as outlining below the slider, is not waited for).

        Raises ``InstannoError`` with the job's message if it failed, or if it is still running
        after ``timeout`` seconds (it is then cancelled).
        """
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._worker is not None and not self._background:
            if time.monotonic() > end:
                self.cancel()
                raise InstannoError(f"the job did not finish within {timeout:g} s; it was cancelled")
            QApplication.processEvents()
            time.sleep(0.01)
        QApplication.processEvents()
        if self.error is not None:
            raise InstannoError(error_message(self.error))
        return self.result

    def _on_error(self, what: str, err: Exception) -> None:
        self.error = err
        if not self._closed:
            self._status(f"{what} failed: {error_message(err)}")
        show_error(f"{what} failed: {error_message(err)}")

    def _on_finished(self, worker: Any, stop: threading.Event) -> None:
        if worker is not self._worker:  # superseded: the job after it owns the widget now
            return
        self._worker = None
        if self._closed:
            return
        if not self._background:
            self._busy_changed(False)
        if stop.is_set():
            self._status("cancelled; nothing changed")
        elif self.error is None:  # done: full, also for a job that reported no steps (Refine)
            self._bar.max = max(int(self._bar.max), 1)
            self._bar.value = self._bar.max
