"""OTP-style supervision for Nova's actors: child specs, strategies, restart intensity, the tree."""

__all__: list[str] = []
