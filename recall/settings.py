"""Settings dataclasses: each field declares its constraint once, one validation reads them all.

A settings class is a frozen dataclass deriving from `Settings`. A field made with `setting(default,
rule)` carries its `Rule` in its metadata; its type is its annotation. `validate()` checks every
field's type and rule, then the class's `check()` (rules between fields); `from_mapping()` builds an
instance from parsed YAML, refusing keys that are not fields and building nested settings the same
way. An error names the field by its path in the file (`finetune.lr`), or, without one, by the
field's name (`typical`), or by its CLI flag (`--lr`) for a class whose fields are flags.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar, Union

from recall.errors import RecallError

RULE = "rule"  # the metadata key of a field's Rule
UNKNOWN = "unknown {name} {value!r}; choose one of {choices}"  # one_of's wording for a name among many
S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Rule:
    """A constraint on a value: `test` holds, else `message` (formatted with `name` and `value`) is the error."""

    test: Callable[[Any], bool]
    message: str

    def check(self, name: str, value: Any) -> None:
        if not self.test(value):
            raise RecallError(self.message.format(name=name, value=value))


POSITIVE = Rule(lambda v: v > 0, "{name} must be positive, got {value!r}")
FRACTION = Rule(lambda v: 0 <= v < 1, "{name} must be in [0, 1), got {value!r}")


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"{{name}} must be > {low}, got {{value!r}}")


def at_least(low: int, note: str = "") -> Rule:
    return Rule(lambda v: v >= low, f"{{name}} must be >= {low}{note}, got {{value!r}}")


def one_of(*choices: str, message: str = "{name} must be one of {choices}, got {value!r}") -> Rule:
    return Rule(lambda v: v in choices, message.replace("{choices}", ", ".join(choices)))


def setting(default: Any = MISSING, rule: Rule | None = None, **kw: Any) -> Any:
    """A dataclass field with its rule (no default: the key is required)."""
    return field(default=default, metadata={RULE: rule}, **kw)


class Settings:
    """The base of a frozen settings dataclass (see the module's docstring)."""

    FLAGS = False  # a path-less error names a field as its CLI flag (--max-length) rather than its name

    def validate(self, path: str = "") -> None:
        """Every field's type and rule, then the rules between fields; errors name `path.field`."""
        hints = type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value, name = getattr(self, f.name), self.name_of(f.name, path)
            if not conforms(value, hints[f.name]):
                raise RecallError(f"{name} must be {describe(hints[f.name])}, got {value!r}")
            if value is not None and (rule := f.metadata.get(RULE)):
                rule.check(name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields, for a class that has any."""

    def name_of(self, key: str, path: str) -> str:
        if path:
            return f"{path}.{key}"
        return "--" + key.replace("_", "-") if self.FLAGS else key

    @classmethod
    def from_mapping(cls: type[S], mapping: Any, path: str = "") -> S:
        """An instance from parsed YAML found at `path` ("" at the top): unknown and missing keys are
        errors, nested settings are built alike, lists become tuples; then validated. Null is no keys."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        mapping = {} if mapping is None else mapping
        if not isinstance(mapping, dict):
            raise RecallError(f"{path or 'the file'} must be a mapping of {', '.join(known)}, got {mapping!r}")
        reject_unknown(mapping, known, path)
        required = [k for k, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
        if missing := [k for k in required if k not in mapping]:
            raise RecallError(f"{join(path, missing[0])} is missing; add it (the README has a complete example)")
        hints = type_hints(cls)
        settings = cls(**{k: build(v, hints[k], join(path, k)) for k, v in mapping.items()})
        settings.validate(path)
        return settings


def reject_unknown(mapping: Mapping[str, Any], known: Iterable[str], path: str, noun: str = "setting") -> None:
    """A key of `mapping` that is not `known` is an error naming its path, the closest known key and all of them."""
    known = list(known)
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecallError(f"{join(path, key)}: unknown {noun} {key!r}{hint}; known: {', '.join(known) or 'none'}")


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def members(hint: Any) -> tuple[Any, ...]:
    """The types a union admits, or the type itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


def build(value: Any, hint: Any, path: str) -> Any:
    """A YAML value as the field's type holds it: nested settings built, a list as a tuple."""
    for h in members(hint):
        if isinstance(h, type) and issubclass(h, Settings):
            return h.from_mapping(value, path)
        if typing.get_origin(h) is tuple and isinstance(value, list):
            return tuple(build(v, typing.get_args(h)[0], f"{path}[{i}]") for i, v in enumerate(value))
    return value


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type (bool is no number; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(conforms(value, h) for h in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if hint is Any:
        return True
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "text",
    bool: "true or false",
    type(None): "null",
    dict: "a mapping",
}


def describe(hint: Any) -> str:
    """A type in the words of a YAML file."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(h) for h in args)
    if origin is tuple:
        return f"a list, each item {describe(args[0])}"
    if origin is dict:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}"
    if isinstance(hint, type) and issubclass(hint, Settings):
        return f"a mapping of {', '.join(f.name for f in fields(hint))}"  # type: ignore[arg-type]
    return TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The fields' annotations as types (they are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)
