"""Payload and metadata: the JSON text the stores write, checked to read back as an equal
value, as PostgreSQL's ``jsonb`` returns it (a step of
[`prepare_append`][django_eventsource.validation.prepare_append]; the module docstring of
`django_eventsource.validation` says which payloads take the cheap check and which the full
one).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from django_eventsource.events import ENVELOPE_FIELDS, DomainEvent
from django_eventsource.exceptions import InvalidAppend

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "jsonb_loads"]

#: The deepest nesting of lists and dicts in a payload or metadata.
MAX_DEPTH: Final = 100
#: The most digits of an int in a payload or metadata: Python's ``json.loads`` refuses more
#: (``sys.get_int_max_str_digits()``), so every reader would fail on the event.
MAX_INT_DIGITS: Final = 4300
_INT_LIMIT: Final = 10**MAX_INT_DIGITS


def _check_text(value: str, field: str) -> None:
    if "\x00" in value:
        raise InvalidAppend(
            field, "contains a NUL character (\\u0000), which PostgreSQL cannot store"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidAppend(
            field,
            f"contains a lone surrogate ({value[exc.start]!r}), which is not valid Unicode "
            "and cannot be stored",
        ) from None


# Payload and metadata -----------------------------------------------------------------

#: ``exclude`` for serializing a payload (a plain set: pydantic-core handles it fastest).
_ENVELOPE: Final = set(ENVELOPE_FIELDS)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the payload schema of one event class allows the cheap check to assume."""

    closed: bool
    floats: tuple[str, ...]
    #: For a class whose payload fields are all plain scalars (int, str, bool, float, each
    #: maybe nullable, no custom serializer): each field with the exact Python types its
    #: serializer writes without a warning. None for any other class.
    scalars: tuple[tuple[str, tuple[type, ...]], ...] | None = None
    #: The top-level payload fields whose schema allows None.
    nullable: frozenset[str] = frozenset()


_shapes: dict[type[DomainEvent], _Shape] = {}
_shapes_lock = threading.Lock()


def _payload_json(event: DomainEvent, index: int) -> str:
    """The payload as compact JSON text, checked to read back as the same payload."""
    cls = type(event)
    shape = _shapes.get(cls) or _shape_of(cls)
    if cls.payload is DomainEvent.payload:
        # warnings="error" refuses a value of another type than its field's (model_copy with
        # an update, model_construct), which would not read back. Where every payload value
        # has exactly a type its scalar field writes, there is nothing to refuse, and the
        # serializer's output is the same without it (pydantic-core takes about 1 us per
        # call to parse a str ``warnings`` argument, more than the serialization itself).
        scalars = shape.scalars
        warnings: bool | str = "error"
        if scalars is not None:
            values = event.__dict__
            for name, types in scalars:
                if type(values[name]) not in types:
                    break
            else:
                warnings = True
        try:
            text: str = cls.__pydantic_serializer__.to_json(
                event,
                exclude=_ENVELOPE,
                warnings=warnings,  # type: ignore[arg-type]
            ).decode()
        except PydanticSerializationError as exc:
            raise _diagnose(event, index, f"cannot be serialized: {exc}") from None
    else:  # an overridden payload(): always checked in full
        try:
            text = json.dumps(event.payload(), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _diagnose(event, index, f"cannot be serialized: {exc}") from None
        _full_check(event, text, index)
        return text
    if shape.closed:
        # The ways a closed schema's payload can fail to read back all show in its text
        # (NUL, NaN or Infinity tokens, too many digits, deep nesting, a null: the
        # serializer writes None as null whatever the field's type, without a warning, so
        # model_copy(update={"n": None}) on an int field would be stored and never read
        # back) or are refused by the serializer (other wrong types, lone surrogates),
        # except a non-finite float written as null: the top-level float fields are looked
        # at directly (nested ones make the schema not closed).
        values = event.__dict__
        for name in shape.floats:
            value = values[name]
            if value is not None and not math.isfinite(value):
                raise InvalidAppend(f"events[{index}].payload.{name}", _NAN_RULE)
        if (
            "\\u0000" not in text
            and _nulls_allowed(shape, values, text)
            and "NaN" not in text
            and "Infinity" not in text
            and len(text) <= MAX_INT_DIGITS
            and (len(text) < 2 * MAX_DEPTH or text.count("[") + text.count("{") <= MAX_DEPTH)
        ):
            return text
    _full_check(event, text, index)
    return text


def _nulls_allowed(shape: _Shape, values: dict[str, Any], text: str) -> bool:
    """Whether every ``null`` in the payload's text is a None of a top-level field that
    allows it (anything else, e.g. a None nested in a list or the word in a string, takes
    the full check)."""
    nulls = text.count("null")
    if not nulls:
        return True
    allowed = shape.nullable
    nones = 0
    for name, value in values.items():
        if value is None and name not in ENVELOPE_FIELDS:
            if name not in allowed:
                return False
            nones += 1
    return nones == nulls


def _metadata_json(metadata: Any, index: int) -> str:
    where = f"events[{index}]"
    if not metadata:
        if type(metadata) is not dict:
            raise InvalidAppend(f"{where}.metadata", "must be a dict")
        return "{}"
    if not isinstance(metadata, dict):
        raise InvalidAppend(f"{where}.metadata", f"must be a dict, not {type(metadata).__name__}")
    _check_json(metadata, f"{where}.metadata", 0)
    return json.dumps(metadata, separators=(",", ":"), allow_nan=False)


_NAN_RULE: Final = (
    "NaN and infinity are not JSON: PostgreSQL refuses them, and they would read back as "
    "null; store None, or the value as a string"
)
_JSON_TYPES: Final = "str, int, float, bool, None, list, or dict with str keys"


def _check_json(value: Any, path: str, depth: int) -> None:
    """Refuse a value that does not read back from JSON (as PostgreSQL stores it) as equal."""
    if isinstance(value, str):
        _check_text(value, path)
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise InvalidAppend(
                path,
                f"an int of more than {MAX_INT_DIGITS} digits cannot be read back from JSON "
                "(Python's int_max_str_digits); store it as a string",
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidAppend(path, _NAN_RULE)
        text = repr(value)
        if "e+" in text and int(Decimal(text)) != value:
            raise InvalidAppend(
                path,
                f"the float {text} is not stored exactly: PostgreSQL's jsonb keeps it as the "
                f"integer {int(Decimal(text))}, which is not equal to it; store it as a "
                "string or an int",
            )
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise InvalidAppend(path, f"is nested more than {MAX_DEPTH} lists or dicts deep")
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_json(item, f"{path}[{i}]", depth + 1)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidAppend(
                    f"{path}[{key!r}]",
                    f"the key is a {type(key).__name__}, but JSON keys are strings: it would "
                    f"read back as {str(key)!r}",
                )
            _check_text(key, f"{path} key {key!r}")
            _check_json(item, f"{path}.{key}", depth + 1)
    else:
        raise InvalidAppend(
            path,
            f"a {type(value).__name__} is not a JSON value, so it would not read back equal "
            f"(use {_JSON_TYPES}; convert it, e.g. to str, yourself)",
        )


def _jsonb_float(text: str) -> float | int:
    """A JSON number as PostgreSQL's jsonb returns it: ``1e+16`` comes back as an integer."""
    if "e" in text or "E" in text:
        number = Decimal(text)
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(number)
    return float(text)


def jsonb_loads(text: str) -> Any:
    """``json.loads`` as PostgreSQL's jsonb would give the value back (see ``_jsonb_float``)."""
    return json.loads(text, parse_float=_jsonb_float)


def _full_check(event: DomainEvent, text: str, index: int) -> None:
    """Decode ``text`` as PostgreSQL would return it, validate it, compare with ``event``."""
    where = f"events[{index}]"
    try:
        data = jsonb_loads(text)
    except RecursionError:
        raise InvalidAppend(
            f"{where}.payload", f"is nested more than {MAX_DEPTH} lists or dicts deep"
        ) from None
    except ValueError as exc:
        raise _diagnose(event, index, f"does not read back from JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidAppend(f"{where}.payload", "payload() must return a dict")
    _check_json(data, f"{where}.payload", 0)  # NUL, depth, NaN as they are in the text
    cls = type(event)
    values = event.__dict__
    envelope = {name: values[name] for name in ENVELOPE_FIELDS}
    try:
        decoded = cls.model_validate({**data, **envelope})
    except ValidationError as exc:
        raise _diagnose(event, index, f"would not read back: {exc}") from None
    for name in cls.model_fields:
        if name in ENVELOPE_FIELDS:
            continue
        if getattr(decoded, name) != values[name]:
            raise _diagnose(
                event,
                index,
                f"would read back as {getattr(decoded, name)!r}, not {values[name]!r}",
                only=name,
            )


def _diagnose(event: DomainEvent, index: int, fallback: str, only: str = "") -> InvalidAppend:
    """The precise refusal for a payload that does not round-trip: the first field whose
    value is not plain JSON, else ``fallback``."""
    where = f"events[{index}]"
    values = event.__dict__
    names = [only] if only else [n for n in type(event).model_fields if n not in ENVELOPE_FIELDS]
    for name in names:
        try:
            _check_json(values.get(name), f"{where}.payload.{name}", 0)
        except InvalidAppend as exc:
            if not _typed_ok(values.get(name)):
                return exc
    return InvalidAppend(f"{where}.payload" + (f".{only}" if only else ""), fallback)


def _typed_ok(value: Any) -> bool:
    """Whether a non-JSON value is one that typed fields read back (UUID, datetime, ...)."""
    from datetime import date, time, timedelta
    from enum import Enum

    from pydantic import BaseModel

    return isinstance(value, (UUID, date, time, timedelta, Decimal, Enum, BaseModel, tuple, set))


# Which payload schemas are closed --------------------------------------------------------

#: Schema types that pydantic serializes and validates back to an equal value by themselves.
_EXACT: Final = frozenset(
    {
        "none",
        "bool",
        "int",
        "float",
        "str",
        "bytes",
        "date",
        "time",
        "datetime",
        "timedelta",
        "decimal",
        "uuid",
        "url",
        "multi-host-url",
        "literal",
        "enum",
        "list",
        "tuple",
        "set",
        "frozenset",
        "dict",
        "nullable",
        "default",
        "model",
        "model-fields",
        "model-field",
        "dataclass",
        "dataclass-args",
        "typed-dict",
        "typed-dict-field",
        "function-before",
        "function-after",
        "definitions",
        "definition-ref",
    }
)


def _shape_of(cls: type[DomainEvent]) -> _Shape:
    schema = cls.__pydantic_core_schema__
    definitions: dict[str, Any] = {}
    _collect_definitions(schema, definitions)
    fields = _find_fields(schema, definitions)
    closed = fields is not None
    floats: list[str] = []
    nullable: set[str] = set()
    if fields is not None:
        for name, field in fields.items():
            if name in ENVELOPE_FIELDS:
                continue
            if field.get("serialization_exclude"):
                closed = False  # not stored: it would read back as its default
                break
            if _allows_none(field.get("schema", {})):
                nullable.add(name)
            inner = _unwrap(field.get("schema", {}), definitions)
            if inner.get("type") == "float":
                floats.append(name)
                continue
            if not _closed(field.get("schema", {}), definitions, set()):
                closed = False
                break
    scalars = _scalars(schema, fields) if closed and fields is not None else None
    shape = _Shape(closed, tuple(floats), scalars, frozenset(nullable))
    with _shapes_lock:
        _shapes[cls] = shape
    return shape


#: Scalar schema types and the exact Python types their serializers write as themselves.
_SCALARS: Final = {"int": (int,), "str": (str,), "bool": (bool,), "float": (float,)}


def _scalars(
    schema: Any, fields: dict[str, Any]
) -> tuple[tuple[str, tuple[type, ...]], ...] | None:
    """``_Shape.scalars`` of a class: None unless the model is serialized field by field
    (no model serializer, computed fields or extra values) and every payload field is a
    scalar without a serializer of its own."""
    if not isinstance(schema, dict) or schema.get("type") != "model":
        return None
    if schema.get("serialization") or (schema.get("config") or {}).get(
        "extra_fields_behavior"
    ) not in (None, "forbid", "ignore"):
        return None
    inner = schema.get("schema", {})
    if inner.get("type") == "function-before":
        inner = inner.get("schema", {})
    if inner.get("type") != "model-fields" or inner.get("computed_fields"):
        return None
    result: list[tuple[str, tuple[type, ...]]] = []
    for name, field in fields.items():
        if name in ENVELOPE_FIELDS:
            continue
        if not isinstance(field, dict) or field.get("serialization_exclude_if"):
            return None
        node: Any = field.get("schema", {})
        types: tuple[type, ...] = ()
        while isinstance(node, dict) and node.get("type") in ("default", "nullable"):
            if node.get("serialization"):
                return None
            if node.get("type") == "nullable":
                types += (type(None),)
            node = node.get("schema", {})
        if not isinstance(node, dict) or node.get("serialization"):
            return None
        scalar = _SCALARS.get(node.get("type", ""))
        if scalar is None:
            return None
        result.append((name, scalar + types))
    return tuple(result)


def _collect_definitions(node: Any, into: dict[str, Any]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "definitions":
            for definition in node.get("definitions", ()):
                if "ref" in definition:
                    into[definition["ref"]] = definition
        for key, value in node.items():
            if key not in ("metadata", "serialization"):
                _collect_definitions(value, into)
    elif isinstance(node, list):
        for item in node:
            _collect_definitions(item, into)


def _find_fields(schema: Any, definitions: dict[str, Any]) -> dict[str, Any] | None:
    """The ``model-fields`` of the event class itself (None when it cannot be found)."""
    node = schema
    for _ in range(20):
        if not isinstance(node, dict):
            return None
        if node.get("type") == "definition-ref":
            node = definitions.get(node.get("schema_ref", ""))
            continue
        if node.get("type") == "model-fields":
            return node.get("fields")
        if node.get("type") in ("model", "definitions", "function-before", "function-after"):
            node = node.get("schema")
            continue
        return None
    return None


def _allows_none(node: Any) -> bool:
    """Whether a field's schema takes None (``X | None``, ``Optional[X]``, ``None``)."""
    while isinstance(node, dict):
        if node.get("type") in ("nullable", "none"):
            return True
        if node.get("type") != "default":
            return False
        node = node.get("schema")
    return False


def _unwrap(node: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict) and node.get("type") in ("default", "nullable"):
        node = node.get("schema", {})
    return node if isinstance(node, dict) else {}


def _closed(node: Any, definitions: dict[str, Any], seen: set[str]) -> bool:
    """Whether every value of this schema reads back from its JSON as an equal value."""
    if not isinstance(node, dict):
        return True
    kind = node.get("type")
    if kind not in _EXACT:
        return False
    serialization = node.get("serialization")
    if isinstance(serialization, dict) and serialization.get("type", "").startswith("function"):
        return False
    if kind == "float":  # a float nested in a list or model: NaN would be hidden as null
        return False
    if kind == "definition-ref":
        ref = node.get("schema_ref", "")
        if ref in seen:
            return True
        return _closed(definitions.get(ref), definitions, seen | {ref})
    if kind in ("list", "set", "frozenset") and "items_schema" not in node:
        return False
    if kind == "dict" and ("keys_schema" not in node or "values_schema" not in node):
        return False
    for key, value in node.items():
        if key in ("metadata", "serialization", "default", "cls", "function", "expected"):
            continue
        if key == "members" or key == "sub_type":
            continue
        if isinstance(value, dict) and ("type" in value or key == "fields"):
            children = value.values() if key == "fields" else [value]
            if not all(_closed(child, definitions, seen) for child in children):
                return False
        elif isinstance(value, list) and not all(
            _closed(item, definitions, seen) for item in value if isinstance(item, dict)
        ):
            return False
    return True
