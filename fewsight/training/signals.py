"""Ctrl-C and SIGTERM as a request to stop between two training steps, where the state is consistent."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While active, the first SIGINT or SIGTERM only sets `requested`; a second one stops at once.

    Outside the main thread, where Python cannot handle signals, it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._request) for number in _SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _request(self, number: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after saving `step` (None: this process saved nothing)."""

    def __init__(self, step: int | None) -> None:
        super().__init__(step)
        self.step = step
