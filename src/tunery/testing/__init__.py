"""Helpers shipped for tests and demos: a tiny model built on the spot, and fakes of the heavy parts.

Importing this package is cheap; ``tiny_model`` imports torch, so import it by its module path.
"""

__all__: list[str] = []
