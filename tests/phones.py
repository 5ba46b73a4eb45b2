"""Typing habits of the simulated phones in the round and background-worker tests."""

from keyboard.device import Device

__all__ = ["TEXTS", "type_habits"]

TEXTS = [
    "see you at the station tonight",
    "meet me at the old bridge",
    "i am waiting near the park gate",
    "wait for me at the coffee shop",
    "we can meet by the river later",
    "call me when you get home",
]


def type_habits(dev: Device, i: int, offset: int = 0) -> None:
    """Phone `i` types five messages of its own habits (every 5th is held back)."""
    for j in range(5):
        dev.commit(TEXTS[(i + j + offset) % len(TEXTS)] + f" {['now', 'soon', 'ok'][i % 3]}")
