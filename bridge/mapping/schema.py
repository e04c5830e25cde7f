"""The JSON Schema of mapping files, for editors (``bridge schema``).

Strict at every level, as the loader is: every object lists its keys and refuses
others, and every key says what it is for. The loader stays the judge (it also checks
JSONPath syntax, regular expressions and Dub's rules on literals); a test holds the two
to the same keys and validates the shipped files against this schema.
"""

from __future__ import annotations

from typing import Any

from ..dub.endpoints import DUB_FIELDS, ENDPOINTS
from .transforms import NAMED

# What each Dub field is, for an editor's hover (Dub's own rules are in dub/endpoints.py).
DUB_FIELD_NOTES = {
    "clickId": 'The Dub click id (the dub_id cookie); a lead\'s "" takes the click of an earlier '
    "deferred lead.",
    "eventName": "The conversion's name in Dub (1..255 characters).",
    "customerExternalId": "Your id of the customer (at most 100 characters, never trimmed).",
    "customerName": "The customer's name (trimmed to 100 characters).",
    "customerEmail": "The customer's email (dropped with a warning when Dub would refuse it).",
    "customerAvatar": "The customer's avatar URL.",
    "metadata": "An object of at most 10,000 characters as JSON.",
    "mode": "Lead mode: async, wait or deferred.",
    "eventQuantity": "Lead: how many times to count it (1..100).",
    "amount": "Sale (or partial refund) amount in the currency's minor units (use transform:"
    " minor_units); a refund without one is a full refund.",
    "currency": "Three-letter currency code, lower-case (default usd at Dub).",
    "paymentProcessor": "stripe, shopify, polar, paddle, apple, revenuecat, dub or custom.",
    "invoiceId": "Dub refuses a second sale with the same invoiceId for 7 days; a refund's"
    " invoice, whose commission it changes.",
    "leadEventName": "The lead event this sale follows.",
    "name": "customer_update: the customer's name.",
    "email": "customer_update: the customer's email (dropped when Dub would refuse it).",
    "avatar": "customer_update: the customer's avatar URL.",
    "stripeCustomerId": "customer_update: the Stripe customer id (lets Dub's Stripe app attribute"
    " later invoices).",
}
_JSONPATH = {"type": "string", "pattern": r"^\$", "description": "A JSONPath, starting at $."}
_PATHS = {
    "type": "array",
    "items": _JSONPATH,
    "minItems": 1,
    "description": "JSONPaths tried in order; the first non-empty value counts.",
}
_NUMBER = {
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^[+-]?(\d+\.?\d*|\.\d+)$"}],
}
_TEST_WORDS: dict[str, tuple[str, dict[str, Any]]] = {
    "exists": ("true: some path finds anything, even null; false: none does.", {"type": "boolean"}),
    "equals": ("The value equals this JSON value exactly (text is case-sensitive).", {}),
    "not_equals": ("The value differs from this JSON value; holds when absent.", {}),
    "in": ("The value is one of these JSON values.", {"type": "array", "minItems": 1}),
    "not_in": ("The value is none of these; holds when absent.", {"type": "array", "minItems": 1}),
    "gt": ("Greater than: numbers and numeric text compare as exact decimals.", _NUMBER),
    "gte": ("Greater than or equal, as exact decimals.", _NUMBER),
    "lt": ("Less than, as exact decimals.", _NUMBER),
    "lte": ("Less than or equal, as exact decimals.", _NUMBER),
    "matches": (
        "An RE2 regular expression (no backreferences or lookaround) searched in text values "
        "(anchor: ^...$).",
        {"type": "string"},
    ),
    "not_empty": (
        "true: some path gives a non-empty value; false: none does.",
        {"type": "boolean"},
    ),
    "starts_with": ("The text value starts with this.", {"type": "string", "minLength": 1}),
    "ends_with": ("The text value ends with this.", {"type": "string", "minLength": 1}),
    "contains": ("The text value contains this.", {"type": "string", "minLength": 1}),
    **{
        f"version_{op}": (
            f"The value read as a dotted version (v2.10.1) is {text} this one.",
            {"anyOf": [{"type": "string", "pattern": r"^[vV]?\d+(\.\d+)*$"}, {"type": "number"}]},
        )
        for op, text in (
            ("gt", "greater than"),
            ("gte", "at least"),
            ("lt", "less than"),
            ("lte", "at most"),
        )
    },
}
_IGNORE_CASE = {
    "type": "boolean",
    "description": "Compare text ignoring case (equals, in, starts_with, matches, ...).",
}


def _obj(properties: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
        **more,
    }


def _condition_defs(prefix: str = "", with_path: bool = True) -> dict[str, Any]:
    """A condition's definitions; ``with_path=False``: the `when` tests of a source's own
    value, which name no path."""
    reason = {"type": "string", "description": "Shown as the skip reason when this does not hold."}
    tests = {word: {**schema, "description": text} for word, (text, schema) in _TEST_WORDS.items()}
    paths = {"path": _JSONPATH, "paths": _PATHS} if with_path else {}
    one_test = {"oneOf": [{"required": [word]} for word in _TEST_WORDS]}
    leaf = _obj(
        {**paths, **tests, "ignore_case": _IGNORE_CASE, "reason": reason},
        "A test on the first non-empty value of path/paths."
        if with_path
        else "A test on the source's own value (after its transforms).",
        allOf=[{"oneOf": [{"required": ["path"]}, {"required": ["paths"]}]}, one_test]
        if with_path
        else [one_test],
    )
    name = f"{prefix}condition"
    ref = {"$ref": f"#/$defs/{name}"}
    many = {"type": "array", "items": ref, "minItems": 1}
    kinds = ("test", "any", "all", "not")
    return {
        name: {"oneOf": [{"$ref": f"#/$defs/{prefix}{k}"} for k in kinds]},
        f"{prefix}test": leaf,
        f"{prefix}any": _obj(
            {"any": {**many, "description": "Holds when one of these holds."}, "reason": reason},
            "Any of the conditions.",
            required=["any"],
        ),
        f"{prefix}all": _obj(
            {"all": {**many, "description": "Holds when every one holds."}, "reason": reason},
            "All of the conditions.",
            required=["all"],
        ),
        f"{prefix}not": _obj(
            {"not": {**ref, "description": "Holds when this does not."}, "reason": reason},
            "The opposite of a condition.",
            required=["not"],
        ),
    }


def _transform() -> dict[str, Any]:
    named = {"enum": sorted(NAMED), "description": "A named transform."}
    value_map = _obj(
        {
            "map": {"type": "object", "description": "Value -> replacement."},
            "fallback": {"description": "What a value not in the map becomes (else kept)."},
        },
        "A lookup table.",
        required=["map"],
    )
    param = _obj(
        {"query_param": {"type": "string", "minLength": 1, "description": "The parameter name."}},
        "The value of a query parameter in a URL or query string, percent-decoded.",
        required=["query_param"],
    )
    text = {"type": "string", "minLength": 1}
    regex = _obj(
        {"regex": {**text, "description": "A regular expression searched in text."}},
        "The first capture group of the first match (else the whole match); absent when none.",
        required=["regex"],
    )
    cookie = _obj(
        {"cookie": {**text, "description": "The cookie's name, compared whole."}},
        "The value of a cookie in cookie text (a=1; dub_id=cl_9), percent-decoded.",
        required=["cookie"],
    )
    replace = _obj(
        {
            "replace": _obj(
                {
                    "pattern": {**text, "description": "A regular expression."},
                    "with": {"type": "string", "description": "The replacement; \\1 a group."},
                },
                "Every match of pattern replaced.",
                required=["pattern", "with"],
            )
        },
        "Text with every match of a regular expression replaced.",
        required=["replace"],
    )
    minor = _obj(
        {
            "minor_units": _obj(
                {
                    "extra_decimals": {
                        "enum": ["round", "refuse"],
                        "description": "round (half away from zero, the default) or refuse: "
                        "more decimals than the currency has make the event invalid.",
                    }
                },
                "minor_units with options.",
            )
        },
        "minor_units, refusing (or rounding) extra decimals.",
        required=["minor_units"],
    )
    return {"oneOf": [named, value_map, param, regex, cookie, replace, minor]}


_SOURCE_KINDS = ("path", "paths", "value", "template", "sum", "first", "add", "object")


def _source_object(extra: dict[str, Any], description: str) -> dict[str, Any]:
    transform = {"$ref": "#/$defs/transform"}
    source = {"$ref": "#/$defs/source"}
    sources = {"type": "array", "items": source, "minItems": 1}
    when = {"anyOf": [{"$ref": "#/$defs/condition"}, {"$ref": "#/$defs/value_condition"}]}
    return _obj(
        {
            "path": _JSONPATH,
            "paths": _PATHS,
            "value": {"description": "A literal value, sent as it is."},
            "template": {
                "type": "string",
                "pattern": r"\{\{.+\}\}",
                "description": "Text with {{ JSONPath }} placeholders; empty counts as absent.",
            },
            "sum": _obj(
                {
                    "items": {**_JSONPATH, "description": "JSONPath of the array of items."},
                    "value": {"type": "string", "description": "The key of each item's value."},
                    "times": {"type": "string", "description": "The key it is multiplied by."},
                },
                "The exact decimal sum of item[value] x item[times] (absent or null times: 1).",
                required=["items", "value"],
            ),
            "first": {**sources, "description": "Sources tried in order; the first value wins."},
            "add": {**sources, "description": "Sources added as exact decimals (numbers)."},
            "subtract": {**sources, "description": "Sources subtracted from the `add` total."},
            "object": {
                "type": "object",
                "additionalProperties": source,
                "minProperties": 1,
                "description": "Chosen keys; a key whose source is absent is left out.",
            },
            "default": {"description": "Used when the source gives no value."},
            "transform": {
                "description": "One transform, or a list applied in order.",
                "anyOf": [transform, {"type": "array", "items": transform}],
            },
            "when": {
                "description": "A condition or a list: the source is absent unless all hold "
                "(a test without a path tests the source's own value).",
                "anyOf": [when, {"type": "array", "items": when, "minItems": 1}],
            },
            **extra,
        },
        description,
        oneOf=[{"required": [k]} for k in _SOURCE_KINDS],
        dependentRequired={"subtract": ["add"]},
    )


def _source() -> dict[str, Any]:
    return {
        "anyOf": [
            _JSONPATH,
            _PATHS,
            _source_object({}, "Where a value comes from, and what happens to it."),
        ]
    }


def _field() -> dict[str, Any]:
    spec = _source_object(
        {"required": {"type": "boolean", "description": "Make an optional Dub field required."}},
        "Where the value comes from, and what happens to it.",
    )
    return {"anyOf": [_JSONPATH, _PATHS, spec]}


def _mapping() -> dict[str, Any]:
    trigger = _obj(
        {
            "event": {
                "description": "Event names, matched exactly.",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                ],
            },
            "event_matches": {
                "type": "string",
                "description": (
                    "An RE2 regular expression (no backreferences or lookaround) searched in "
                    "the event name."
                ),
            },
            "type": {
                "enum": ["track", "identify", "delete"],
                "description": "track (the default: with event or event_matches), or every"
                " identify call, or every delete message (no event name).",
            },
            "conditions": {
                "type": "array",
                "items": {"$ref": "#/$defs/condition"},
                "description": "All must hold, else the event is skipped with the reason.",
            },
            "require": {
                "type": "array",
                "items": {"$ref": "#/$defs/condition"},
                "description": "Checked once `conditions` hold: one that fails makes the event "
                "invalid (a dead letter in `bridge deadletters`) with its reason, not skipped.",
            },
        },
        "Which events this mapping takes.",
        anyOf=[
            {
                "properties": {"type": {"enum": ["identify", "delete"]}},
                "required": ["type"],
                "not": {"anyOf": [{"required": ["event"]}, {"required": ["event_matches"]}]},
            },
            {
                "properties": {"type": {"const": "track"}},
                "oneOf": [{"required": ["event"]}, {"required": ["event_matches"]}],
            },
        ],
    )
    field = {"$ref": "#/$defs/field"}
    per_action = [
        {
            "if": {"properties": {"action": {"const": action}}, "required": ["action"]},
            "then": {
                "properties": {
                    "fields": {
                        "propertyNames": {"enum": sorted(DUB_FIELDS[action])},
                        "required": sorted(ENDPOINTS[action].needed),
                    }
                }
            },
        }
        for action in ENDPOINTS
    ]
    return _obj(
        {
            "name": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                "maxLength": 100,
                "description": "Unique across files; the ledger key with the messageId.",
            },
            "description": {"type": "string", "description": "Free text."},
            "group": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                "maxLength": 100,
                "description": "Among the mappings of one group, the first in load order (files "
                "by name, then order in the file) whose trigger and conditions hold takes the "
                "event; the others skip it ('group NAME: taken by MAPPING').",
            },
            "trigger": trigger,
            "action": {
                "enum": sorted(ENDPOINTS),
                "description": "The Dub call: " + ", ".join(ENDPOINTS) + ".",
            },
            "fields": _obj(
                {
                    name: {**field, "description": DUB_FIELD_NOTES[name]}
                    for name in sorted(set().union(*DUB_FIELDS.values()))
                },
                "Dub field name -> where its value comes from.",
            ),
        },
        "One rule: which events, which Dub call, which fields.",
        required=["name", "trigger", "action", "fields"],
        allOf=per_action,
    )


def _test() -> dict[str, Any]:
    request = _obj(
        {
            "mapping": {"type": "string", "description": "The mapping that sends it."},
            "body": {"type": "object", "description": "The exact Dub request body."},
        },
        "One Dub request the event must make.",
        required=["mapping", "body"],
    )
    outcome = {
        "anyOf": [
            {"type": "string", "minLength": 1, "description": "A mapping name."},
            _obj(
                {
                    "mapping": {"type": "string", "minLength": 1, "description": "The mapping."},
                    "reason": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Text its skip reason (or its errors) must contain.",
                    },
                },
                "A mapping, and text its reason must contain.",
                required=["mapping"],
            ),
        ]
    }
    return _obj(
        {
            "name": {"type": "string", "minLength": 1, "description": "Shown by `bridge test`."},
            "event": {"type": "object", "description": "The Segment event, inline."},
            "event_file": {
                "type": "string",
                "description": "A file of events, relative to this one.",
            },
            "expect": {
                "type": "array",
                "items": request,
                "description": "Exactly the requests made.",
            },
            "invalid": {
                "type": "array",
                "items": outcome,
                "description": "Mappings that must find the event invalid.",
            },
            "skipped": {
                "type": "array",
                "items": outcome,
                "description": "Mappings whose trigger takes the event and that must skip it.",
            },
        },
        "A golden test: an event and exactly the Dub requests it makes.",
        required=["name", "expect"],
        oneOf=[{"required": ["event"]}, {"required": ["event_file"]}],
    )


def mapping_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one mapping file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "segment-dub-bridge mapping file",
        **_obj(
            {
                "version": {"const": 1, "description": "The file format; 1 is the only one."},
                "mappings": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/mapping"},
                    "minItems": 1,
                    "description": "The rules of this file.",
                },
                "tests": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/golden"},
                    "description": "Golden tests, run by `bridge test`.",
                },
                "exclude": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/condition"},
                    "description": "For every mapping of the set (all files): an event for which "
                    "one of these holds is skipped ('excluded by FILE: ...').",
                },
            },
            "Segment events in, Dub conversions out.",
            required=["mappings"],
        ),
        "$defs": {
            **_condition_defs(),
            **_condition_defs("value_", with_path=False),
            "transform": _transform(),
            "source": _source(),
            "field": _field(),
            "mapping": _mapping(),
            "golden": _test(),
        },
    }
