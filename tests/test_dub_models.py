"""Dub request bodies: what the mappings build always validates against Dub's OpenAPI file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dub_models import DUB_FIELDS, clean_body
from bridge.engine import Engine
from bridge.replay_io import read_events
from tests.conftest import SAMPLES, needs_shared, order, signup


def request_schemas() -> dict[str, Any]:
    spec = json.loads((needs_shared() / "track-openapi.json").read_text())
    return {
        path: op["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path, op in spec["paths"].items()
    }


def assert_valid(path: str, body: dict[str, Any], schemas: dict[str, Any]) -> None:
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
        for event in read_events(Path(file)):
            for result in engine.plan(event):
                if result.outcome == "ready":
                    assert result.request_path and result.body is not None
                    assert_valid(result.request_path, result.body, schemas)
                    sent += 1
    assert sent >= 5


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
        ("metadata", ["a"], "metadata: dropped, must be an object"),
    ],
)
def test_optional_lead_fields_are_dropped_not_fatal(field: str, value: Any, warning: str) -> None:
    """An optional field Dub would refuse is dropped with a warning; required ones stay."""
    body = {"clickId": "c", "eventName": "Sign Up", "customerExternalId": "u", field: value}
    clean, errors, warnings = clean_body("lead", body)
    assert errors == [] and field not in clean
    assert warnings[0].startswith(warning)


def test_required_field_errors_are_errors() -> None:
    """A required field Dub would refuse makes the body unsendable, naming the field."""
    _, errors, _ = clean_body(
        "sale",
        {"customerExternalId": "", "amount": 1.5},
        sources={"amount": "$.properties.revenue"},
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
    clean, errors, warnings = clean_body("lead", body)
    assert errors == [] and clean["customerName"] == "\U0001f600" * 50
    assert warnings == ["customerName: trimmed from 120 to 100 characters"]
    _, errors, _ = clean_body("sale", {"customerExternalId": "\U0001f600" * 51, "amount": 1})
    assert errors and errors[0].startswith("customerExternalId: is 102 characters")
