"""`response_format`: JSON output enforced by constrained decoding (`subnet.client.constraints`).

`{"type": "text"}` (or none) is free text. `{"type": "json_object"}` constrains the output to one
JSON object. `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` constrains it
to a JSON value valid against `schema`, whatever `strict` says (non-strict is a promise OpenAI
may break; keeping it costs nothing here). A schema is checked twice before any token is
generated: against the JSON Schema meta-schema (jsonschema), then compiled by llguidance
(which refuses keywords it cannot enforce rather than ignoring them); either failure is a 400
naming the field, so nothing a caller asks for is silently weakened.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from subnet.api.errors import APIError
from subnet.client.constraints import Grammar, GrammarError

MAX_SCHEMA_CHARS = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def check_schema(schema: Any, param: str) -> dict:
    """A JSON schema a caller sent: an object, bounded, valid against its meta-schema."""
    if not isinstance(schema, dict):
        raise invalid(param, f"Invalid schema for '{param}': a JSON schema must be an object.", "invalid_json_schema")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise invalid(param, f"Invalid schema for '{param}': larger than {MAX_SCHEMA_CHARS} characters.",
                      "invalid_json_schema")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise invalid(param, f"Invalid schema for '{param}'{' at ' + where if where else ''}: {e.message}.",
                      "invalid_json_schema") from None
    return schema


def compile_schema(tokenizer: Any, schema: dict, param: str) -> Grammar:
    """The grammar for `schema`, or a 400 saying why the grammar library cannot enforce it."""
    try:
        return Grammar.json_schema(tokenizer, schema)
    except GrammarError as e:
        raise invalid(param, f"The schema in '{param}' cannot be enforced by constrained decoding: {e}.",
                      "unsupported_json_schema") from None


def response_format_grammar(tokenizer: Any, fmt: Any) -> Grammar | None:
    """The grammar `response_format` asks for (None: free text). Raises a 400 `APIError`."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid("response_format", "response_format must be an object with a 'type'.")
    kind = fmt["type"]
    extra = set(fmt) - {"type", "json_schema"}
    if extra:
        raise invalid(f"response_format.{sorted(extra)[0]}", f"Unknown field in response_format: {sorted(extra)[0]}.",
                      "unknown_parameter")
    if kind == "text":
        return None
    if kind == "json_object":
        try:
            return Grammar.json_object(tokenizer)
        except GrammarError as e:
            raise invalid("response_format", f"JSON output is not available for this model: {e}.") from None
    if kind != "json_schema":
        raise invalid("response_format.type", f"Invalid value for 'response_format.type': {kind!r} (expected "
                                              "'text', 'json_object' or 'json_schema').")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid("response_format.json_schema", "response_format.json_schema must be an object.")
    unknown = set(spec) - {"name", "schema", "strict", "description"}
    if unknown:
        field = sorted(unknown)[0]
        raise invalid(f"response_format.json_schema.{field}", f"Unknown field in json_schema: {field}.",
                      "unknown_parameter")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid("response_format.json_schema.name", "response_format.json_schema.name must be 1-64 "
                                                          "characters of a-z, A-Z, 0-9, '_' and '-'.")
    if spec.get("strict") is not None and not isinstance(spec.get("strict"), bool):
        raise invalid("response_format.json_schema.strict", "response_format.json_schema.strict must be a boolean.")
    param = "response_format.json_schema.schema"
    schema = check_schema(spec.get("schema", {}), param)
    return compile_schema(tokenizer, schema, param)
