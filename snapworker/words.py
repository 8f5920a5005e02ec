"""Words in output people read: a count and its noun in agreement ("1 desktop", "2 desktops")."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``count`` and ``noun``, the noun plural unless ``count`` is exactly 1 (``plural_noun``, default noun + s).

    >>> plural(1, "desktop"), plural(0, "desktop"), plural(3, "batch", "batches")
    ('1 desktop', '0 desktops', '3 batches')
    """
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"
