"""A service running in a thread of the test process, for tests with several group members."""

from __future__ import annotations

import threading

from streamval.consumers.learner import LearnerService
from streamval.consumers.service import ValuationService


class Running:
    """A valuer or learner service in a thread; `failure` holds what it raised."""

    def __init__(self, service: ValuationService | LearnerService, name: str) -> None:
        self.service = service
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.failure.append(exc)

    def ok(self) -> bool:
        """True while it runs without failure (a failure fails the waiting test at once)."""
        assert not self.failure, self.failure
        return True

    def stop(self) -> None:
        """Stop and check it ended cleanly."""
        self.halt()
        assert not self.thread.is_alive()
        assert not self.failure, self.failure

    def halt(self) -> None:
        """Stop without checking (teardown after a failure elsewhere); idempotent."""
        self.service.stop()
        self.thread.join(timeout=60)
