"""Fields: templates, exact sums, amounts already in cents, query parameters, deferred leads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.amounts import minor_units
from bridge.mapping.templates import Template
from bridge.mapping.transforms import NAMED, TransformError, query_param
from bridge.mapping.values import MISSING
from tests.helpers.mapkit import engine, errors, event, one, sale

BASKET = sale(
    "amount: {sum: {items: $.properties.products, value: price, times: quantity}, "
    "transform: minor_units}"
)
NAME = sale(
    """\
    amount: {path: $.properties.revenue, transform: minor_units}
    customerName:
      template: "{{ $.properties.first }} {{ $.properties.last }}"
      default: Anonymous
    """
)


@pytest.mark.parametrize(
    ("props", "name"),
    [
        ({"first": "Ada", "last": "Lovelace"}, "Ada Lovelace"),
        ({"first": "Ada"}, "Ada"),
        ({"first": "Ada", "last": None}, "Ada"),
        ({"first": 7, "last": True}, "7 true"),
        ({"first": 19.99, "last": False}, "19.99 false"),
        ({}, "Anonymous"),  # empty result: absent, so the default applies
        ({"first": "  ", "last": ""}, "Anonymous"),
    ],
)
def test_template_renders_values(props: dict[str, Any], name: str) -> None:
    """Text as is, numbers as written, true/false, nothing for missing; trimmed; empty is absent."""
    got = one(engine(NAME), event(revenue=1, **props))
    assert got.body is not None and got.body["customerName"] == name


@settings(max_examples=50, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=8),
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()),
)
def test_template_text_around_a_value(prefix: str, value: Any) -> None:
    """A template is its literal text with each placeholder replaced by the value's text."""
    template = Template(prefix + "{{ $.v }}!")
    expected = (
        {True: "true", False: "false", None: ""}.get(value, value)
        if not isinstance(value, (str, int)) or isinstance(value, bool)
        else str(value)
    )
    assert template.render({"v": value}) == (prefix + expected + "!").strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hello {{ $.a", "never closed"),
        ("Hello {{ }}", "empty placeholder"),
        ("Hello", "no {{ JSONPath }} placeholder"),
        ("{{ $.a[ }}", "bad JSONPath"),
        ("{{ $.a.`len` }}", "`len` is not supported"),
    ],
)
def test_bad_templates_are_load_errors(text: str, message: str) -> None:
    """A template that cannot render is refused at load, at its line."""
    found = errors(sale(f'amount: $.a\ncustomerName: {{template: "{text}"}}'))
    assert any(":8: s.fields.customerName.template" in e and message in e for e in found), found


def test_basket_total_is_exact() -> None:
    """19.99 x 3 is 59.97, sent as 5997; an item without a quantity counts once."""
    got = one(engine(BASKET), event(products=[{"price": 19.99, "quantity": 3}]))
    assert got.body is not None and got.body["amount"] == 5997
    products = [{"price": 19.99, "quantity": 3}, {"price": "0.01"}]
    got = one(engine(BASKET), event(products=products))
    assert got.body is not None and got.body["amount"] == 5998


@pytest.mark.parametrize(
    ("products", "outcome", "message"),
    [
        ([], "invalid", "amount: no value"),  # an empty array is absent; amount is required
        (None, "invalid", "amount: no value"),
        ([{"price": "abc", "quantity": 1}], "invalid", "item 0 has a non-numeric 'price'"),
        ([{"price": 1}, {"quantity": 1}], "invalid", "item 1 has no 'price'"),
        ([{"price": 1, "quantity": "two"}], "invalid", "item 0 has a non-numeric 'quantity'"),
        ([{"price": True}], "invalid", "item 0 has a non-numeric 'price'"),
        (["x"], "invalid", "item 0 is not an object"),
        ({"price": 1}, "invalid", "items is a dict, not an array"),
        ([{"price": "1e999999", "quantity": "1e999999"}], "invalid", "cannot be added exactly"),
    ],
)
def test_basket_total_problems_name_the_item(products: Any, outcome: str, message: str) -> None:
    """A bad item makes the event invalid, naming the item's index and key (path and value)."""
    got = one(engine(BASKET), event(products=products))
    assert got.outcome == outcome
    assert any(message in e for e in got.errors), got.errors


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.decimals(min_value=0, max_value=10**6, places=2),
            st.integers(min_value=0, max_value=50),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_sum_then_minor_units_matches_exact_arithmetic(items: list[tuple[Decimal, int]]) -> None:
    """The total of price x quantity in cents equals the exact decimal computation."""
    products = [{"price": str(price), "quantity": qty} for price, qty in items]
    expected = minor_units(sum((price * qty for price, qty in items), Decimal(0)))
    got = one(engine(BASKET), event(products=products))
    if expected == 0:
        assert got.outcome == "skipped"
    else:
        assert got.body is not None and got.body["amount"] == expected


@pytest.mark.parametrize(
    ("value", "sent"),
    [(1999, 1999), ("1999", 1999), (1999.0, 1999), ("12.50", None), (19.99, None), (True, None)],
)
def test_already_minor_units(value: Any, sent: int | None) -> None:
    """An integer or integer text is taken as is; a fraction or a boolean makes it invalid."""
    got = one(
        engine(sale("amount: {path: $.properties.cents, transform: already_minor_units}")),
        event(cents=value),
    )
    if sent is None:
        assert got.outcome == "invalid" and got.errors[0].startswith("amount: already_minor_units")
    else:
        assert got.body is not None and got.body["amount"] == sent


def test_already_minor_units_needs_no_minor_units_warning() -> None:
    """An amount kept in cents is not warned about as an amount without minor_units."""
    from tests.helpers.mapkit import load

    result = load(sale("amount: {path: $.properties.cents, transform: already_minor_units}"))
    assert result.issues == []


def test_huge_integers_are_refused_fast() -> None:
    """integer and already_minor_units bound the value before building it (1e999999)."""
    with pytest.raises(TransformError, match="beyond"):
        NAMED["integer"]("1e999999", {})
    with pytest.raises(TransformError, match="beyond"):
        NAMED["already_minor_units"](Decimal("1e999999"), {})
    with pytest.raises(TransformError, match="not a whole number"):  # text: digits only
        NAMED["already_minor_units"]("1e999999", {})


QUERIES = [
    ("https://shop.example/?utm=x&dub_id=cl_1#top", "cl_1"),
    ("?dub_id=cl%5F1", "cl_1"),
    ("utm=x&dub_id=a+b", "a b"),
    ("https://shop.example/?dub_id=", MISSING),
    ("https://shop.example/", MISSING),
    ("https://shop.example/?utm=x", MISSING),
    ("https://shop.example/#dub_id=x", MISSING),
    ("https://shop.example/?dub_id=first&dub_id=second", "first"),
]


def test_query_param() -> None:
    """A parameter of a URL or query string, percent-decoded; absent when missing."""
    param = query_param("dub_id")
    assert [(text, param(text, {})) for text, _ in QUERIES] == QUERIES


def test_query_param_absent_goes_to_the_next_path_and_default() -> None:
    """When the URL has no such parameter, the next path is tried, then the default."""
    mapping = sale(
        """\
        amount: {path: $.properties.revenue, transform: minor_units}
        clickId:
          paths: [$.properties.url, $.properties.search]
          transform: {query_param: dub_id}
        """
    )
    got = one(engine(mapping), event(revenue=1, url="https://x.test/?a=1", search="?dub_id=cl_2"))
    assert got.body is not None and got.body["clickId"] == "cl_2"
    got = one(engine(mapping), event(revenue=1, url="https://x.test/"))
    assert got.body is not None and "clickId" not in got.body
    got = one(engine(mapping), event(revenue=1, url=12))  # an optional field: dropped, still sent
    assert got.outcome == "ready" and "query_param needs" in got.warnings[0]


LEAD = """\
mappings:
  - name: l
    trigger: {event: Trial Activated}
    action: lead
    fields:
      clickId: CLICK
      eventName: {value: Qualified}
      customerExternalId: $.userId
"""


@pytest.mark.parametrize("click", ['{value: ""}', '{path: $.properties.click, default: ""}'])
def test_deferred_lead_sends_an_empty_click_id(click: str) -> None:
    """A lead's clickId may be the literal or default "": Dub's deferred lead, second step."""
    got = one(engine(LEAD.replace("CLICK", click)), event("Trial Activated"))
    assert got.outcome == "ready" and got.body is not None and got.body["clickId"] == ""


def test_a_path_that_finds_empty_text_is_still_absent() -> None:
    """A click id path that finds "" finds nothing: the lead is invalid, not deferred."""
    got = one(
        engine(LEAD.replace("CLICK", "$.properties.click")), event("Trial Activated", click="")
    )
    assert got.outcome == "invalid" and got.errors[0].startswith("clickId: no value")


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('clickId: {value: ""}', "'' must not be empty"),  # a sale's clickId is never ""
        ('customerName: {value: ""}', "'' must not be empty"),
        ("customerName: {sum: {items: $.p, value: price}}", "only amount and eventQuantity"),
        ("amount: {sum: {items: $.p}}", "value"),
        ("amount: {sum: {items: $.p, value: price}, path: $.a}", "give exactly one of"),
        ("amount: {path: $.a, transform: {query_param: ''}}", "at least 1 character"),
        ("amount: {path: $.a, transform: {query_param: a, map: {}}}", "query_param"),
        ("amount: {path: '$.a.`sub(/,/, .)`'}", "`sub()` is not supported"),
        ("amount: {path: '$.a + $.b'}", "arithmetic"),
    ],
)
def test_bad_fields_are_load_errors(field: str, message: str) -> None:
    """Literals Dub would refuse and misused constructs are refused at load."""
    found = errors(sale(field if field.startswith("amount") else f"amount: $.a\n{field}"))
    assert any(message in e for e in found), found
