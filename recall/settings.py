"""Settings dataclasses, validated by pydantic: each field declares its type, default and rule once.

A settings class is a frozen (standard library) dataclass deriving from `Settings`; pydantic reads it
as it is, so `dataclasses.replace`, `asdict` and `fields` keep working. A field made with
`setting(default, rule, help)` carries its `Rule`: pydantic checks the field's type (strictly: text
is no number, true no integer, an integer is a number), refuses keys that are not fields and builds
nested settings, then every rule and the class's `check()` (rules between fields) run. The JSON
schema of a class (`schema()`) holds the same types, defaults, rules and help.

Each pydantic error becomes one line naming the field by its path in the file (`finetune.lr`), or,
without one, by the field's name (`typical`), or by its CLI flag (`--lr`) for a class whose fields
are flags; an unknown key also names the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar, Union

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from recall.errors import RecallError

RULE = "rule"  # the metadata key of a field's Rule
UNKNOWN = "unknown {name} {value!r}; choose one of {choices}"  # one_of's wording for a name among many
S = TypeVar("S", bound="Settings")
FAILED = "recall_rule"  # the pydantic error type of a failed Rule: its message is the one-line error


@dataclass(frozen=True)
class Rule:
    """A constraint on a value: `test` holds, else `message` (formatted with `name` and `value`) is the
    error. `schema` says the same in JSON Schema's words (e.g. {"minimum": 1}), for editors."""

    test: Callable[[Any], bool]
    message: str
    schema: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def check(self, name: str, value: Any) -> None:
        if not self.test(value):
            raise RecallError(self.message.format(name=name, value=value))


POSITIVE = Rule(lambda v: v > 0, "{name} must be positive, got {value!r}", {"exclusiveMinimum": 0})
FRACTION = Rule(lambda v: 0 <= v < 1, "{name} must be in [0, 1), got {value!r}", {"minimum": 0, "exclusiveMaximum": 1})


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"{{name}} must be > {low}, got {{value!r}}", {"exclusiveMinimum": low})


def at_least(low: int, note: str = "") -> Rule:
    return Rule(lambda v: v >= low, f"{{name}} must be >= {low}{note}, got {{value!r}}", {"minimum": low})


def one_of(*choices: str, message: str = "{name} must be one of {choices}, got {value!r}") -> Rule:
    return Rule(lambda v: v in choices, message.replace("{choices}", ", ".join(choices)), {"enum": list(choices)})


def setting(default: Any = MISSING, rule: Rule | None = None, help: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its rule and help (no default: the key is required)."""
    metadata: dict[str, Any] = {RULE: rule}
    if help:
        metadata["description"] = help  # pydantic reads it into the JSON schema
    if rule is not None and rule.schema:
        metadata["json_schema_extra"] = functools.partial(_constrain, rule.schema)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def _constrain(constraints: Mapping[str, Any], schema: dict[str, Any]) -> None:
    """A rule's JSON Schema constraints on a field's schema: on its non-null alternative, if it has one."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    (options[0] if len(options) == 1 else schema).update(constraints)


class Settings:
    """The base of a frozen settings dataclass (see the module's docstring)."""

    FLAGS: ClassVar[bool] = False  # a path-less error names a field as its CLI flag (--max-length)
    # strict scalars (set in `__get_pydantic_core_schema__`), nested settings from mappings
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True, revalidate_instances="always")

    def validate(self, path: str = "") -> None:
        """Every field's type and rule, then the rules between fields; errors name `path.field`."""
        validated(type(self), self, path)

    def check(self) -> None:
        """Rules between fields, for a class that has any (raises RecallError)."""

    @classmethod
    def name_of(cls, key: str, path: str) -> str:
        if path:
            return f"{path}.{key}"
        return "--" + key.replace("_", "-") if cls.FLAGS else key

    @classmethod
    def from_mapping(cls: type[S], mapping: Any, path: str = "") -> S:
        """An instance from parsed YAML found at `path` ("" at the top): unknown and missing keys are
        errors, nested settings are built alike, lists become tuples; then validated. Null is no keys."""
        return validated(cls, mapping, path)

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """The JSON schema of the mapping `from_mapping` takes."""
        return adapter(cls).json_schema()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        schema = handler(source)
        if schema.get("type") == "dataclass":
            schema["strict"] = False  # a mapping builds it (its fields stay strict)
        return core_schema.no_info_wrap_validator_function(functools.partial(_build, cls), schema)


def _build(cls: type[Settings], value: Any, handler: Callable[[Any], Any]) -> Any:
    """pydantic's validation of one settings class, with lists as tuples, null as no keys, integers
    kept as given where a number is asked for, then the rules."""
    hints = type_hints(cls)
    if value is None:
        value = {}
    if isinstance(value, dict):
        given = value
        value = {k: tuples(v, hints[k]) if k in hints else v for k, v in given.items()}
    else:  # an instance is checked as it is
        given = {f.name: getattr(value, f.name) for f in fields(cls) if hasattr(value, f.name)}  # type: ignore[arg-type]
    settings = handler(value)
    for f in fields(cls):  # type: ignore[arg-type]
        kept = given.get(f.name)
        if type(kept) is int and type(getattr(settings, f.name)) is float:
            object.__setattr__(settings, f.name, kept)  # 1 stays 1, as written (records print it)
    for f in fields(cls):  # type: ignore[arg-type]
        rule, value = f.metadata.get(RULE), getattr(settings, f.name)
        if rule is not None and value is not None and not rule.test(value):
            raise PydanticCustomError(FAILED, "{text}", {"field": f.name, "text": rule.message, "value": value})
    try:
        settings.check()
    except RecallError as err:
        raise PydanticCustomError(FAILED, "{text}", {"field": None, "text": str(err), "value": None}) from None
    return settings


def tuples(value: Any, hint: Any) -> Any:
    """A YAML list as the tuple the field's type holds (a list of lists as a tuple of tuples)."""
    if isinstance(value, list):
        for h in members(hint):
            if typing.get_origin(h) is tuple:
                return tuple(tuples(v, typing.get_args(h)[0]) for v in value)
    return value


@functools.cache
def adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def validated(cls: type[S], value: Any, path: str) -> S:
    """`value` (a mapping or an instance) validated as `cls`; the first problem as a one-line RecallError."""
    try:
        return adapter(cls).validate_python(value)
    except ValidationError as err:
        raise RecallError(message(cls, value, path, err.errors()[0])) from None


def message(cls: type[Settings], value: Any, path: str, error: Mapping[str, Any]) -> str:
    """One pydantic error in the words of a YAML file, the field named by its path."""
    kind, loc = error["type"], list(error["loc"])
    if kind == "unexpected_keyword_argument":
        loc, unknown = loc[:-1], loc[-1]
    # walk the location down the settings classes: `owner` (at `owner_path`) holds the field `key` of type `hint`
    owner, owner_path, key, hint, where = cls, path, None, cls, path
    for step in loc:
        settings = settings_type(hint)
        if settings is not None and isinstance(step, str) and step in type_hints(settings):
            owner, owner_path, key, hint = settings, where, step, type_hints(settings)[step]
            found = item(value, step)
            value, where = tuples(found, hint) if isinstance(value, Mapping) else found, join(where, step)
        elif isinstance(step, int) and settings is None and settings_type(item_type(hint)) is not None:
            hint, value, where, key = item_type(hint), item(value, step), f"{where}[{step}]", None
        else:
            break
    settings = settings_type(hint)
    if kind == FAILED:  # a rule of the settings at `where`, or one between its fields (its message as it is)
        ctx = error["ctx"]
        named = (settings or owner).name_of(ctx["field"], where) if ctx["field"] else ""
        return ctx["text"].format(name=named, value=ctx["value"]) if ctx["field"] else ctx["text"]
    if kind == "unexpected_keyword_argument":
        return unknown_message(where, unknown, type_hints(settings or owner))
    if kind == "missing":
        return f"{join(owner_path, key)} is missing; add it (the README has a complete example)"
    if settings is not None and kind in ("dataclass_type", "dataclass_args_type", "model_type"):
        known = ", ".join(f.name for f in fields(settings))  # type: ignore[arg-type]
        return f"{where or 'the file'} must be a mapping of {known}, got {value!r}"
    name = owner.name_of(key, owner_path) if key is not None else where
    return f"{name} must be {describe(hint)}, got {value!r}"


def unknown_message(path: str, key: Any, known: Iterable[str], noun: str = "setting") -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{join(path, key)}: unknown {noun} {key!r}{hint}; known: {', '.join(known) or 'none'}"


def reject_unknown(mapping: Mapping[str, Any], known: Iterable[str], path: str, noun: str = "setting") -> None:
    """A key of `mapping` that is not `known` is an error naming its path, the closest known key and all of them."""
    known = list(known)
    for key in mapping:
        if key not in known:
            raise RecallError(unknown_message(path, key, known, noun))


def item(container: Any, key: Any) -> Any:
    """`container[key]`, or its attribute `key`, or None."""
    if isinstance(container, Mapping):
        return container.get(key)
    if isinstance(container, (list, tuple)):
        return container[key] if isinstance(key, int) and key < len(container) else None
    return getattr(container, key, None) if isinstance(key, str) else None


def settings_type(hint: Any) -> type[Settings] | None:
    """The settings class a field's type admits, if any."""
    return next((h for h in members(hint) if isinstance(h, type) and issubclass(h, Settings)), None)


def item_type(hint: Any) -> Any:
    """The item type of a tuple type among a field's type's members, else None."""
    return next((typing.get_args(h)[0] for h in members(hint) if typing.get_origin(h) is tuple), None)


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def members(hint: Any) -> tuple[Any, ...]:
    """The types a union admits, or the type itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


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
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in {f.name for f in fields(cls)}}
