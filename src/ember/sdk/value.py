"""`Value`: equality, hashing and a repr from a class's `__slots__`, for the SDK's small immutable
values (`Retries`, `Image` and its steps, `DeployResult`). Not dataclasses: containers make these
at every cold start, and `dataclasses` (which imports `inspect`) with the classes it generates
cost more there than the rest of the SDK."""

from __future__ import annotations


class Value:
    __slots__ = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
