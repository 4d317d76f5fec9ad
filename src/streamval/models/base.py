"""Settings versus learned state: the base class of every stateful model part.

As in river, constructor arguments are the settings and are stored as given, under their own
names; learned state lives in private attributes made by `_reset()`. That makes `clone()`
generic (a new instance from the same settings) and lets `from_settings` build a part from the
engine's settings by name instead of copying them field by field.

>>> class Counter(Estimator):
...     def __init__(self, step: int = 1) -> None:
...         self.step = step
...         self._reset()
...     def _reset(self) -> None:
...         self.total = 0
>>> c = Counter(step=2)
>>> c.total = 10
>>> clone = c.clone()
>>> clone.step, clone.total
(2, 0)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Self


class Estimator:
    """Settings are the constructor's parameters, kept as attributes of the same names."""

    # Constructor parameters whose engine setting has another name (parameter -> setting).
    settings_names: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def _get_params(self) -> dict[str, Any]:
        """The settings this instance was built with."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self._param_names()}

    def clone(self, **overrides: Any) -> Self:
        """A new instance with the same settings (and `overrides`) and fresh learned state."""
        return type(self)(**{**self._get_params(), **overrides})

    @classmethod
    def from_settings(cls, settings: object, **overrides: Any) -> Self:
        """An instance whose parameters are taken from `settings` by name (see
        `settings_names`); parameters the settings do not have keep their defaults."""
        params: dict[str, Any] = {}
        for name in cls._param_names():
            source = cls.settings_names.get(name, name)
            if hasattr(settings, source):
                params[name] = copy.deepcopy(getattr(settings, source))
        return cls(**{**params, **overrides})
