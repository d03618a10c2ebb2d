"""Counts the requests an instance is serving, so that shutdown can wait for them."""


class InFlight:
    def __init__(self) -> None:
        self.count = 0

    def started(self) -> None:
        self.count += 1

    def ended(self) -> None:
        self.count -= 1
