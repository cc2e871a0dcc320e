"""What an estimator was built with: its constructor's arguments, for tracking and for a copy."""

from __future__ import annotations

import inspect
from typing import Any


class ConstructorParams:
    """Mixin for estimators that keep each constructor argument as an attribute of its name."""

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as given (for tracking, or for a new instance)."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}
