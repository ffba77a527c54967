"""gdb event handlers connected together and disconnected together."""
from __future__ import annotations


class Subscriptions:
    def __init__(self):
        self._pairs: list[tuple[object, object]] = []

    def connect(self, *pairs) -> None:
        """connect((gdb.events.X, handler), ...)"""
        for registry, handler in pairs:
            registry.connect(handler)
            self._pairs.append((registry, handler))

    def disconnect_all(self) -> None:
        for registry, handler in self._pairs:
            try:
                registry.disconnect(handler)
            except (ValueError, RuntimeError):
                pass  # already gone with gdb's teardown
        self._pairs.clear()
