"""Thespian actor classes: thin message shells over the plain objects in nova/."""

__all__: list[str] = []
