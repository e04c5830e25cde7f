"""Dub's endpoints: the bodies the mappings build validate against Dub's OpenAPI file, and the
field rules, written once, clean what Dub would refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.dub.endpoints import DUB_FIELDS, ENDPOINTS, LEAD, SALE
from bridge.mapping.engine import Engine
from bridge.reader import read_file
from tests.conftest import SAMPLES, needs_shared, order, signup


def request_schemas() -> dict[str, Any]:
    spec = json.loads((needs_shared() / "track-openapi.json").read_text())
    return {
        path: op["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path, op in spec["paths"].items()
    }


def lifecycle_schemas() -> dict[tuple[str, str], Any]:
    """(method, path) -> request body schema, from Dub's lifecycle OpenAPI file."""
    spec = json.loads((needs_shared() / "lifecycle-openapi.json").read_text())
    return {
        (method.upper(), path): op["requestBody"]["content"]["application/json"]["schema"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict) and "requestBody" in op
    }


def assert_valid(path: str, body: dict[str, Any], schemas: dict[str, Any]) -> None:
    if path not in schemas:  # a lifecycle action's call
        assert_lifecycle_valid(path, body)
        return
    jsonschema.Draft7Validator(schemas[path]).validate(body)
    # Dub's server is stricter than the spec file in places (shared/dub/README.md).
    if "eventQuantity" in body:
        assert isinstance(body["eventQuantity"], int) and 1 <= body["eventQuantity"] <= 100
    assert len(json.dumps(body.get("metadata") or {}, separators=(",", ":"))) <= 10_000
    assert None not in body.values() and "externalId" not in body


def test_sample_requests_validate_against_dubs_openapi(engine: Engine) -> None:
    """Every request the default mappings build for the shipped samples matches Dub's schema."""
    schemas = request_schemas()
    sent = 0
    for file in sorted(SAMPLES.rglob("*json")):
        for item in read_file(Path(file)):
            for result in engine.plan(item.event):
                if result.outcome == "ready":
                    assert result.request_path and result.body is not None
                    assert_valid(result.request_path, result.body, schemas)
                    sent += 1
    assert sent >= 5


def assert_lifecycle_valid(path: str, body: dict[str, Any]) -> None:
    """A refund's planned body holds what the bridge reads (its PATCH is checked in
    test_lifecycle); a customer call's body, less the id sent in the path, is Dub's."""
    if path == "/commissions":
        assert set(body) <= {"invoiceId", "amount", "currency"} and "invoiceId" in body
        return
    assert path.startswith("/customers/ext_"), path
    rest = {k: v for k, v in body.items() if k != "customerExternalId"}
    schema = lifecycle_schemas()[("PATCH", "/customers/{id}")]
    jsonschema.Draft7Validator(schema).validate(rest)
    assert None not in rest.values()


def test_lifecycle_fields_are_dubs_fields() -> None:
    """customer_update sends only fields of Dub's PATCH /customers body (and country, which
    Dub's handler ignores, is not offered); a refund's PATCHes are Dub's commission fields."""
    schemas = lifecycle_schemas()
    customer = set(schemas[("PATCH", "/customers/{id}")]["properties"])
    assert DUB_FIELDS["customer_update"] - {"customerExternalId"} == customer - {
        "country",
        "externalId",
    }
    commission = schemas[("PATCH", "/commissions/{id}")]
    for patch in (
        {"status": "refunded"},
        {"saleAmount": 7450},
        {"saleAmount": 1, "currency": "eur"},
    ):
        jsonschema.Draft7Validator(commission).validate(patch)


def test_model_fields_are_dubs_fields() -> None:
    """Our request models name exactly the fields of Dub's two request schemas."""
    schemas = request_schemas()
    assert DUB_FIELDS["lead"] == set(schemas["/track/lead"]["properties"])
    assert DUB_FIELDS["sale"] == set(schemas["/track/sale"]["properties"])


texts = st.one_of(st.none(), st.text(max_size=120), st.integers(), st.floats(), st.booleans())


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=texts,
    email=st.one_of(texts, st.emails()),
    name=texts,
    revenue=st.one_of(texts, st.decimals(allow_nan=False, places=3).map(str)),
    currency=st.one_of(texts, st.sampled_from(["USD", "jpy", "Eur", "kwd"])),
    processor=texts,
    order_id=texts,
)
def test_any_event_gives_a_valid_body_or_a_clear_error(
    engine: Engine,
    user: Any,
    email: Any,
    name: Any,
    revenue: Any,
    currency: Any,
    processor: Any,
    order_id: Any,
) -> None:
    """Whatever the event holds, the engine sends a schema-valid body or says why not."""
    schemas = request_schemas()
    sale = order(
        revenue=revenue, currency=currency, payment_processor=processor, order_id=order_id
    ) | {"userId": user}
    sale["context"] = {"traits": {"email": email, "name": name}}
    lead = signup() | {"userId": user}
    lead["context"]["traits"].update(email=email, name=name)
    for event in (sale, lead):
        for result in engine.plan(event):
            if result.outcome == "ready":
                assert result.request_path and result.body is not None
                assert_valid(result.request_path, result.body, schemas)
            else:
                assert result.outcome in ("invalid", "skipped")
                assert result.errors or result.reason


@pytest.mark.parametrize(
    ("field", "value", "warning"),
    [
        ("eventQuantity", 0, "eventQuantity: dropped, must be an integer from 1 to 100"),
        ("eventQuantity", 101, "eventQuantity: dropped"),
        ("eventQuantity", 2.5, "eventQuantity: dropped"),
        ("mode", "later", "mode: dropped, must be one of async, wait, deferred"),
        ("customerAvatar", 42, "customerAvatar: dropped, must be text"),
        ("customerAvatar", "avatar.png", "customerAvatar: dropped, must be an http(s) URL"),
        ("customerAvatar", "ftp://x.test/a.png", "customerAvatar: dropped, must be an http(s)"),
        ("customerAvatar", "javascript:alert(1)", "customerAvatar: dropped, must be an http(s)"),
        ("customerAvatar", "https://", "customerAvatar: dropped, must be an http(s) URL"),
        ("customerAvatar", "https://[nothost]/a", "customerAvatar: dropped, must be an http(s)"),
        ("metadata", ["a"], "metadata: dropped, must be an object"),
    ],
)
def test_optional_lead_fields_are_dropped_not_fatal(field: str, value: Any, warning: str) -> None:
    """An optional field Dub would refuse is dropped with a warning; required ones stay."""
    body = {"clickId": "c", "eventName": "Sign Up", "customerExternalId": "u", field: value}
    clean, errors, warnings = LEAD.clean(body)
    assert errors == [] and field not in clean
    assert warnings[0].startswith(warning)


def test_an_http_or_https_avatar_is_kept() -> None:
    """customerAvatar keeps http and https URLs with a host, whatever the scheme's case."""
    for url in ("https://x.test/a.png", "http://x.test/a.png", "HTTPS://x.test/a"):
        body = {"clickId": "c", "eventName": "E", "customerExternalId": "u", "customerAvatar": url}
        clean, errors, warnings = LEAD.clean(body)
        assert (clean["customerAvatar"], errors, warnings) == (url, [], [])


def test_required_field_errors_are_errors() -> None:
    """A required field Dub would refuse makes the body unsendable, naming the field."""
    _, errors, _ = SALE.clean(
        {"customerExternalId": "", "amount": 1.5},
        origins={"amount": "$.properties.revenue"},
    )
    assert errors == [
        "customerExternalId: must not be empty (value '')",
        "amount: must be an integer in minor units (hint: transform: minor_units) "
        "(path $.properties.revenue, value 1.5)",
    ]


def test_lengths_count_as_dub_counts_them() -> None:
    """Limits count UTF-16 units as Dub's JavaScript does: 60 emoji are 120 characters."""
    body = {
        "clickId": "c",
        "eventName": "Sign Up",
        "customerExternalId": "u",
        "customerName": "\U0001f600" * 60,
    }
    clean, errors, warnings = LEAD.clean(body)
    assert errors == [] and clean["customerName"] == "\U0001f600" * 50
    assert warnings == ["customerName: trimmed from 120 to 100 characters"]
    _, errors, _ = SALE.clean({"customerExternalId": "\U0001f600" * 51, "amount": 1})
    assert errors and errors[0].startswith("customerExternalId: is 102 characters")


@pytest.mark.parametrize("endpoint", list(ENDPOINTS.values()), ids=list(ENDPOINTS))
def test_request_model_is_the_strict_form_of_the_rules(endpoint: Any) -> None:
    """The pydantic request model and the field rules are one definition: what clean() would
    change or refuse, the model refuses; what clean() keeps, it accepts."""
    base = {name: {"amount": 1999, "currency": "usd"}.get(name, "x") for name in endpoint.needed}
    assert endpoint.model.model_validate(base)
    for value in ("", "\U0001f600" * 60, 12, 2.5, None):
        for name in endpoint.fields:
            body = base | {name: value}
            _, errors, warnings = endpoint.clean(body)
            if errors or warnings:
                with pytest.raises(ValidationError):
                    endpoint.model.model_validate(body)


def test_needed_fields_are_dubs_required_fields() -> None:
    """The fields each mapping must give are those Dub requires (or its server needs)."""
    assert LEAD.needed == {"clickId", "eventName", "customerExternalId"}
    assert SALE.needed == {"customerExternalId", "amount"}
