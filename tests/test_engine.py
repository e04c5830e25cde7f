"""The default mappings: every rule of the product's out-of-the-box behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.items import Unreadable
from bridge.core.results import Result
from bridge.mapping.engine import Engine
from tests.conftest import order, signup


def one(engine: Engine, event: Any) -> Result:
    (result,) = engine.plan(event)
    return result


def body(engine: Engine, event: Any) -> dict[str, Any]:
    result = one(engine, event)
    assert result.outcome == "ready", result.to_line()
    assert result.body is not None
    return result.body


# --- lead ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Sign Up", "Signed Up"])
def test_lead_events_by_dub_and_segment_names(engine: Engine, name: str) -> None:
    """Both 'Sign Up' and 'Signed Up' become a lead."""
    result = one(engine, signup(event=name))
    assert (result.mapping, result.request_path) == ("signup-lead", "/track/lead")
    assert result.body == {
        "clickId": "cl_1",
        "eventName": name,
        "customerExternalId": "user_1",
        "customerEmail": "a@example.com",
        "mode": "wait",
        "metadata": {"plan": "pro"},
    }


def test_lead_click_id_from_dub_browser_plugin(engine: Engine) -> None:
    """Without context.traits.clickId, integrations['Dub (Actions)'].dub_id is used."""
    event = signup(click=None, integrations={"Dub (Actions)": {"dub_id": "cl_plugin"}})
    assert body(engine, event)["clickId"] == "cl_plugin"


def test_lead_traits_click_id_wins(engine: Engine) -> None:
    """context.traits.clickId is preferred over the plugin's dub_id."""
    event = signup(click="cl_traits", integrations={"Dub (Actions)": {"dub_id": "cl_plugin"}})
    assert body(engine, event)["clickId"] == "cl_traits"


@pytest.mark.parametrize("click", [None, ""])
def test_organic_sign_up_is_skipped(engine: Engine, click: str | None) -> None:
    """A sign-up with no click id anywhere is skipped with a reason, not an error."""
    result = one(engine, signup(click=click))
    assert result.outcome == "skipped"
    assert result.errors == ()
    assert result.reason is not None and "organic" in result.reason


def test_numeric_user_id_becomes_text(engine: Engine) -> None:
    """userId 12345 is sent as customerExternalId '12345'."""
    assert body(engine, signup(userId=12345))["customerExternalId"] == "12345"


def test_customer_fields_fall_back_to_properties(engine: Engine) -> None:
    """Name, email and avatar come from context.traits, else from properties."""
    event = signup(
        context={"traits": {"clickId": "c"}},
        properties={"name": "Ann", "email": "ann@example.com", "avatar": "https://x.test/a.png"},
    )
    got = body(engine, event)
    assert (got["customerName"], got["customerEmail"], got["customerAvatar"]) == (
        "Ann",
        "ann@example.com",
        "https://x.test/a.png",
    )


def test_lead_without_user_id_is_invalid(engine: Engine) -> None:
    """A lead with no userId names the field and the paths tried."""
    event = signup()
    del event["userId"]
    result = one(engine, event)
    assert result.outcome == "invalid"
    assert result.errors == ("customerExternalId: no value (paths tried: $.userId)",)


# --- sale ---------------------------------------------------------------------------------


def test_sale_body(engine: Engine) -> None:
    """Order Completed becomes a sale with every default field."""
    event = order(payment_processor="Stripe", products=[{"sku": "a", "price": 1}])
    event["context"] = {"traits": {"clickId": "cl_9", "name": "Jo", "email": "jo@example.com"}}
    assert body(engine, event) == {
        "customerExternalId": "user_1",
        "amount": 1999,
        "currency": "usd",
        "invoiceId": "o-m-1",
        "paymentProcessor": "stripe",
        "eventName": "Order Completed",
        "clickId": "cl_9",
        "customerName": "Jo",
        "customerEmail": "jo@example.com",
        "metadata": event["properties"],
    }


def test_sale_amount_falls_back_to_total(engine: Engine) -> None:
    """Without revenue, properties.total is the amount."""
    event = order(total="42.50")
    del event["properties"]["revenue"]
    assert body(engine, event)["amount"] == 4250


def test_zero_decimal_currency_is_not_multiplied(engine: Engine) -> None:
    """1500 JPY is sent as 1500; the currency is lower-cased."""
    got = body(engine, order(revenue=1500, currency="JPY"))
    assert (got["amount"], got["currency"]) == (1500, "jpy")


def test_currency_defaults_to_usd(engine: Engine) -> None:
    """Without properties.currency the sale is in usd."""
    event = order()
    del event["properties"]["currency"]
    assert body(engine, event)["currency"] == "usd"


def test_invoice_id_is_order_id_as_text_else_message_id(engine: Engine) -> None:
    """order_id 123 becomes '123'; without it the messageId is the invoiceId."""
    assert body(engine, order(order_id=123))["invoiceId"] == "123"
    event = order()
    del event["properties"]["order_id"]
    assert body(engine, event)["invoiceId"] == "m-1"


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("Stripe", "stripe"),
        ("SHOPIFY", "shopify"),
        ("revenuecat", "revenuecat"),
        ("paypal", "custom"),
        (None, "custom"),
    ],
)
def test_payment_processor(engine: Engine, given: str | None, sent: str) -> None:
    """Dub's processors are lower-cased; anything else becomes custom."""
    event = order() if given is None else order(payment_processor=given)
    assert body(engine, event)["paymentProcessor"] == sent


def test_direct_sale_fields_only_when_present(engine: Engine) -> None:
    """Without a click id or customer details, those keys are left out (never null)."""
    got = body(engine, order())
    assert "clickId" not in got and "customerEmail" not in got
    assert None not in got.values()


def test_products_array_does_not_break_metadata(engine: Engine) -> None:
    """A products array is carried in metadata as it is."""
    products = [{"sku": f"s{i}", "price": i + 0.99, "quantity": 1} for i in range(5)]
    assert body(engine, order(products=products))["metadata"]["products"] == products


def test_zero_amount_is_skipped(engine: Engine) -> None:
    """Amount 0 is skipped with a reason: Dub would record nothing."""
    result = one(engine, order(revenue=0))
    assert result.outcome == "skipped" and "amount is 0" in (result.reason or "")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "amount is negative"),
        ("abc", "text is not a decimal number"),
        (True, "a boolean is not an amount"),
        ("NaN", "text is not a decimal number"),
        (9e16, "above 9007199254740991"),
        ({"v": 1}, "a dict is not an amount"),
    ],
)
def test_bad_amount_makes_the_event_invalid(engine: Engine, value: Any, message: str) -> None:
    """A bad amount names the field, the path and the value."""
    result = one(engine, order(revenue=value))
    assert result.outcome == "invalid"
    (error,) = result.errors
    assert error.startswith("amount: ") and message in error
    assert "path $.properties.revenue" in error


def test_bad_currency_is_invalid_not_guessed(engine: Engine) -> None:
    """A currency that is not a code makes the sale invalid (the amount's scale is unknown)."""
    result = one(engine, order(currency="US Dollars"))
    assert result.outcome == "invalid"
    assert "path $.properties.currency" in result.errors[0]


# --- optional fields never cost a conversion ----------------------------------------------


def test_bad_email_is_dropped_with_a_warning(engine: Engine) -> None:
    """An email Dub would refuse is dropped; the conversion is still sent; the warning is masked."""
    event = signup()
    event["context"]["traits"]["email"] = "jane.doe@@example"
    result = one(engine, event)
    assert result.outcome == "ready" and "customerEmail" not in (result.body or {})
    assert any("customerEmail: dropped" in w for w in result.warnings)
    assert "jane.doe" not in " ".join(result.warnings)


def test_long_name_is_trimmed(engine: Engine) -> None:
    """A name over 100 characters is trimmed to 100, with a warning."""
    event = signup()
    event["context"]["traits"]["name"] = "N" * 150
    result = one(engine, event)
    assert result.body is not None and result.body["customerName"] == "N" * 100
    assert result.warnings == ("customerName: trimmed from 150 to 100 characters",)


def test_oversized_metadata_drops_its_largest_keys(engine: Engine) -> None:
    """Metadata over 10,000 characters loses its largest keys until it fits; still sent."""
    event = order(blob="x" * 20_000, campaign="spring")
    result = one(engine, event)
    assert result.outcome == "ready" and result.body is not None
    assert "blob" not in result.body["metadata"] and result.body["metadata"]["campaign"] == "spring"
    assert any("dropped keys: blob" in w for w in result.warnings)


def test_over_long_customer_id_is_invalid(engine: Engine) -> None:
    """customerExternalId over 100 characters is not trimmed (that would merge customers)."""
    result = one(engine, order() | {"userId": "u" * 101})
    assert result.outcome == "invalid" and "customerExternalId" in result.errors[0]


# --- dispatch and bad events --------------------------------------------------------------


def test_unmatched_events_are_skipped(engine: Engine) -> None:
    """An event no mapping names is one skipped line with the reason."""
    result = one(engine, {"type": "track", "event": "Product Viewed", "messageId": "x"})
    assert (result.outcome, result.mapping, result.reason) == (
        "skipped",
        None,
        "no mapping for event 'Product Viewed'",
    )


def test_non_track_events_are_skipped(engine: Engine) -> None:
    """A page or identify call is skipped, even when it carries a mapped name."""
    result = one(engine, {"type": "page", "event": "Order Completed", "messageId": "x"})
    assert result.outcome == "skipped" and "not 'track'" in (result.reason or "")


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ([1, 2], "an event is a JSON object, got list"),
        ("text", "an event is a JSON object, got str"),
        (order() | {"properties": "oops"}, "properties: Input should be a valid dictionary"),
        (order() | {"messageId": 42}, "messageId: Input should be a valid string"),
        ({k: v for k, v in order().items() if k != "messageId"}, "messageId: Field required"),
        (Unreadable("f.ndjson:3", "not JSON"), "f.ndjson:3: not JSON"),
    ],
)
def test_malformed_events_are_invalid(engine: Engine, event: Any, error: str) -> None:
    """A malformed event is invalid with a clear error; nothing is sent for it."""
    result = one(engine, event)
    assert result.outcome == "invalid"
    assert any(e.startswith(error) for e in result.errors), result.errors


def test_one_event_two_mappings_leads_first(tmp_path: Any) -> None:
    """An event that is both a sign-up and a purchase makes a lead, then a sale."""
    from bridge.service.mapping_files import load_directory

    (tmp_path / "both.yaml").write_text("""
mappings:
  - name: z-purchase
    trigger: {event: Signed Up}
    action: sale
    fields:
      customerExternalId: $.userId
      amount: {path: $.properties.revenue, transform: minor_units}
  - name: z-signup
    trigger: {event: Signed Up}
    action: lead
    fields:
      clickId: $.context.traits.clickId
      eventName: $.event
      customerExternalId: $.userId
""")
    engine = load_directory(tmp_path).engine
    event = signup(event="Signed Up", properties={"revenue": 5})
    results = engine.plan(event)
    assert [(r.mapping, r.action) for r in results] == [
        ("z-signup", "lead"),
        ("z-purchase", "sale"),
    ]
