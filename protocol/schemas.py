"""JSON schemas an engine compiles into a grammar (`response_format`, tool parameters): what its grammar
compiler cannot use is refused with a 400 before the engine sees it (vLLM answers such a schema with a
500, which a gateway would otherwise report as an engine failure).

Checked: a `false` schema where a value must match it (a property, a `$defs` entry, a branch), an empty
`enum`, bounds out of order (`minimum` > `maximum`, `minLength` > `maxLength`, ...), and integers beyond
64 bits. `additionalProperties: false` and the like are keywords, not such schemas, and are fine.
"""

from __future__ import annotations

from typing import Any

# keyword -> how its value holds subschemas: "map" (name -> schema), "list" (schemas), "one" (a schema)
_SUBSCHEMAS = {
    "properties": "map", "patternProperties": "map", "$defs": "map", "definitions": "map",
    "dependentSchemas": "map", "anyOf": "list", "oneOf": "list", "allOf": "list", "prefixItems": "list",
    "items": "one", "contains": "one", "not": "one", "if": "one", "then": "one", "else": "one",
    "propertyNames": "one", "additionalProperties": "one", "unevaluatedProperties": "one",
    "unevaluatedItems": "one",
}  # fmt: skip
_FALSE_ALLOWED = {"additionalProperties", "unevaluatedProperties", "unevaluatedItems", "items", "not"}
_BOUNDS = (("minimum", "maximum"), ("exclusiveMinimum", "exclusiveMaximum"), ("minLength", "maxLength"),
           ("minItems", "maxItems"), ("minProperties", "maxProperties"), ("minContains", "maxContains"))  # fmt: skip
_INT64 = (-(2**63), 2**63 - 1)


def schema_problem(schema: Any) -> str | None:
    """Why a grammar compiler cannot use `schema` ("at <path>: ..."), or None. Iterative (no recursion)."""
    stack: list[tuple[Any, str, bool]] = [(schema, "", True)]
    while stack:
        node, path, is_schema = stack.pop()
        if isinstance(node, bool) or node is None:
            continue
        if isinstance(node, int):
            if not _INT64[0] <= node <= _INT64[1]:
                return f"at {path or '/'}: the integer {node} is beyond 64 bits"
            continue
        if isinstance(node, list):
            stack.extend((item, f"{path}/{i}", False) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if is_schema:
            problem = _own_problem(node)
            if problem:
                return f"at {path or '/'}: {problem}"
        for keyword, value in node.items():
            where = f"{path}/{keyword}"
            kind = _SUBSCHEMAS.get(keyword) if is_schema else None
            children = _children(kind, value, where)
            if children is None:
                stack.append((value, where, False))
                continue
            for child, child_path in children:
                if child is False and keyword not in _FALSE_ALLOWED:
                    return f"at {child_path}: a `false` schema (no value can match it)"
                stack.append((child, child_path, True))
    return None


def _children(kind: str | None, value: Any, where: str) -> list[tuple[Any, str]] | None:
    if kind == "map" and isinstance(value, dict):
        return [(child, f"{where}/{name}") for name, child in value.items()]
    if kind == "list" and isinstance(value, list):
        return [(child, f"{where}/{i}") for i, child in enumerate(value)]
    if kind == "one":
        return [(value, where)]
    return None


def _own_problem(node: dict[str, Any]) -> str | None:
    if "enum" in node and isinstance(node["enum"], list) and not node["enum"]:
        return "an empty `enum` (no value can match it)"
    for low, high in _BOUNDS:
        a, b = node.get(low), node.get(high)
        if _number(a) and _number(b) and a > b:
            return f"`{low}` ({a}) is above `{high}` ({b})"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
