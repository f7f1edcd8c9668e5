#!/usr/bin/env python3
"""Validates an OpenAPI 3.1 document: `python3 tests/tools/validate-openapi.py FILE`.

1. openapi-spec-validator (the spec's JSON Schema, operation ids, path
   parameters, and the schemas of components, parameters and responses);
2. what that validator does not look at: each request body's schema is
   checked against the OpenAPI 3.1 schema dialect (openapi-schema-validator,
   which it brings along), and every local `$ref` of the document must point
   at something in it.

Prints every error with where it is and exits non-zero when there is one.
Install first: `python3 -m pip install openapi-spec-validator` (.ci/run does).
"""

import json
import sys
from urllib.parse import unquote

from jsonschema.exceptions import SchemaError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator


def pointer(parts) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def request_body_schemas(spec):
    """(where, schema) of every request body's media types."""
    bodies = []
    for path, item in (spec.get("paths") or {}).items():
        for method, operation in (item or {}).items():
            if isinstance(operation, dict) and isinstance(operation.get("requestBody"), dict):
                bodies.append((["paths", path, method, "requestBody"], operation["requestBody"]))
    for name, body in ((spec.get("components") or {}).get("requestBodies") or {}).items():
        bodies.append((["components", "requestBodies", name], body))
    for where, body in bodies:
        for media, content in (body.get("content") or {}).items():
            if isinstance(content, dict) and "schema" in content:
                yield where + ["content", media, "schema"], content["schema"]


def refs(value, where):
    """(where, $ref) of every `$ref` string in the document."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref" and isinstance(child, str):
                yield where, child
            else:
                yield from refs(child, where + [key])
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from refs(child, where + [i])


def resolves(spec, ref: str) -> bool:
    node = spec
    fragment = unquote(ref[1:])
    if fragment == "":
        return True
    if not fragment.startswith("/"):
        return False
    for token in fragment[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: validate-openapi.py FILE", file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if not str(spec.get("openapi", "")).startswith("3.1."):
        print(f"{path}: not an OpenAPI 3.1 document (openapi = {spec.get('openapi')!r})", file=sys.stderr)
        return 1

    errors = []
    try:
        for error in OpenAPIV31SpecValidator(spec).iter_errors():
            errors.append((pointer(getattr(error, "absolute_path", None) or []), error.message))
    except Exception as e:  # an unresolvable $ref raises instead of yielding
        text = str(e)
        errors.append(("(document)", f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"))
    for where, schema in request_body_schemas(spec):
        try:
            OAS31Validator.check_schema(schema)
        except SchemaError as e:
            errors.append((pointer(where + list(e.absolute_path)), e.message))
    for where, ref in refs(spec, []):
        if ref.startswith("#") and not resolves(spec, ref):
            errors.append((pointer(where), f"$ref {ref} points at nothing"))

    for where, message in errors:
        print(f"error at {where}: {message}", file=sys.stderr)
    if errors:
        print(f"{path}: not a valid OpenAPI 3.1 document ({len(errors)} errors)", file=sys.stderr)
        return 1
    print(f"{path}: valid OpenAPI {spec['openapi']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
