"""The mapping language's second step, sources and transforms: what ops could not write.

Findings: one transform over several paths turned the cookie text `dub_id=cl_9; b=2` into
the click id `cl_9; b=2`; `already_minor_units` took the text "49.00" as 49 cents;
`minor_units` sent the European "1.999" as 200, with no way to refuse it. And a total
minus a discount, a basket plus shipping, metadata of chosen keys, a click id from a
cookie and a name falling back to the email's local part could not be written at all.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.amounts import minor_units
from bridge.mapping.explain import explain, explain_text
from bridge.mapping.schema import mapping_schema
from bridge.mapping.transforms import TransformError, cookie, regex, replace
from bridge.mapping.values import MISSING
from tests.helpers.mapkit import engine, errors, event, load, one, sale

COOKIES = "$.context.traits.cookies"


def _lead(fields: str) -> str:
    extra = "\n".join("      " + line for line in fields.strip("\n").splitlines())
    return (
        "mappings:\n  - name: l\n    trigger: {event: Sign Up}\n    action: lead\n"
        "    fields:\n      eventName: $.event\n      customerExternalId: $.userId\n" + extra + "\n"
    )


def _signup(**traits: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Sign Up",
        "messageId": "m-1",
        "userId": "u1",
        "context": {"traits": traits},
    }


def _body(text: str, data: dict[str, Any]) -> dict[str, Any]:
    got = one(engine(text), data)
    assert got.body is not None, (got.outcome, got.errors, got.reason)
    return dict(got.body)


# --- the findings ---------------------------------------------------------------------------

CLICK_FIRST = _lead(
    """
clickId:
  first:
    - {path: $.context.page.url, transform: {query_param: dub_id}}
    - {path: $.context.traits.cookies, transform: {cookie: dub_id}}
"""
)


def test_a_cookie_gives_its_own_value_not_the_rest_of_the_cookie_text() -> None:
    """`dub_id=cl_9; b=2` gives the click id cl_9 through `first` with a cookie transform."""
    data = _signup(cookies="dub_id=cl_9; b=2") | {"context": {}}
    data["context"] = {
        "page": {"url": "https://a.test/?x=1"},
        "traits": {"cookies": "dub_id=cl_9; b=2"},
    }
    assert _body(CLICK_FIRST, data)["clickId"] == "cl_9"


def test_query_param_over_cookie_text_is_refused_not_misread() -> None:
    """The old form, one query_param over URL and cookie paths, no longer sends `cl_9; b=2`."""
    text = _lead(
        "clickId:\n  paths: [$.context.page.url, $.context.traits.cookies]\n"
        "  transform: {query_param: dub_id}"
    )
    data = _signup(cookies="dub_id=cl_9; b=2")
    data["context"]["page"] = {"url": "https://a.test/?x=1"}
    got = one(engine(text), data)
    assert got.outcome == "invalid", got.body
    assert "hint: cookie text takes {cookie: NAME}" in got.errors[0]


def test_already_minor_units_refuses_text_with_a_decimal_point() -> None:
    """ "49.00" is a major amount, never 49 cents; the JSON number 49.0 is still 49."""
    text = sale("amount: {path: $.properties.cents, transform: already_minor_units}")
    got = one(engine(text), event(cents="49.00"))
    assert got.outcome == "invalid"
    assert "already_minor_units" in got.errors[0] and "'49.00'" in got.errors[0]
    assert one(engine(text), event(cents=49.0)).body == {"customerExternalId": "u1", "amount": 49}


@pytest.mark.parametrize(
    ("amount", "currency"), [("1.999", "EUR"), (1.5, "JPY"), ("0.001", "usd"), ("19.991", "gbp")]
)
def test_extra_decimals_refuse_makes_the_event_invalid(amount: Any, currency: str) -> None:
    """With extra_decimals: refuse, more decimals than the currency has is invalid, not 200."""
    text = sale(
        "currency: {path: $.properties.currency, transform: lower}\n"
        "amount: {path: $.properties.a, transform: {minor_units: {extra_decimals: refuse}}}"
    )
    got = one(engine(text), event(a=amount, currency=currency))
    assert got.outcome == "invalid"
    assert "more than" in got.errors[0] and "decimals" in got.errors[0], got.errors


def test_plain_minor_units_still_rounds_half_away_from_zero() -> None:
    """Plain minor_units keeps its documented rounding: "1.999" EUR is 200, 1.005 is 101."""
    text = sale(
        "currency: {path: $.properties.currency, transform: lower}\n"
        "amount: {path: $.properties.a, transform: minor_units}"
    )
    assert _body(text, event(a="1.999", currency="EUR"))["amount"] == 200
    assert _body(text, event(a=1.005, currency="usd"))["amount"] == 101


@settings(max_examples=80, deadline=None)
@given(
    st.decimals(min_value=0, max_value=10**9, places=4, allow_nan=False),
    st.sampled_from(["usd", "eur", "jpy", "kwd"]),
)
def test_refusing_extra_decimals_sends_exactly_or_refuses(amount: Decimal, currency: str) -> None:
    """refuse sends what rounding would when nothing is lost, and refuses otherwise."""
    scaled = amount if currency == "jpy" else amount * 100
    rounded = minor_units(str(amount), currency)
    if scaled == scaled.to_integral_value():
        assert minor_units(str(amount), currency, refuse_extra=True) == rounded
    else:
        with pytest.raises(ValueError, match="more than"):
            minor_units(str(amount), currency, refuse_extra=True)


# --- first ----------------------------------------------------------------------------------

NAME_FIRST = _lead(
    """
clickId: {value: cl_1}
customerName:
  first:
    - {path: $.context.traits.name, transform: trim}
    - {path: $.context.traits.email, transform: {regex: "^([^@]+)@"}}
  transform: upper
"""
)


@pytest.mark.parametrize(
    ("traits", "name"),
    [
        ({"name": " Ada ", "email": "grace@example.com"}, "ADA"),
        ({"name": "  ", "email": "grace@example.com"}, "GRACE"),  # trimmed to "": next one
        ({"email": "grace@example.com"}, "GRACE"),
        ({"email": "no-at-sign"}, None),  # the regex finds nothing: absent
        ({}, None),
    ],
)
def test_first_takes_the_first_alternative_with_a_value(
    traits: dict[str, Any], name: str | None
) -> None:
    """Each alternative runs its own transforms; the first non-empty wins; then the field's."""
    assert _body(NAME_FIRST, _signup(**traits)).get("customerName") == name


def test_a_field_transform_that_finds_nothing_moves_first_to_the_next_alternative() -> None:
    """`first: [A, B]` with the field's transform behaves as `paths: [A, B]` with it."""
    text = _lead(
        "clickId:\n  first: [$.context.traits.url, $.context.traits.query]\n"
        "  transform: {query_param: dub_id}"
    )
    got = _body(text, _signup(url="https://a.test/?x=1", query="dub_id=cl_2"))
    assert got["clickId"] == "cl_2"


# --- add / subtract -------------------------------------------------------------------------

NET = sale(
    """\
    amount:
      add: [$.properties.total, {path: $.properties.shipping, default: 0}]
      subtract: [{path: $.properties.discount, default: 0}]
      transform: minor_units
    """
)


@pytest.mark.parametrize(
    ("props", "amount"),
    [
        ({"total": 100.1, "shipping": "4.95", "discount": 10.05}, 9500),
        ({"total": 0.1, "shipping": 0.2}, 30),  # 0.1 + 0.2 is 0.3, exactly
        ({"total": "19.99"}, 1999),
        ({"total": 19.99, "shipping": None, "discount": ""}, 1999),  # empty: the default
    ],
)
def test_add_and_subtract_are_exact(props: dict[str, Any], amount: int) -> None:
    """Terms are exact decimals; a term without a value takes its default."""
    assert _body(NET, event(**props))["amount"] == amount


def test_a_term_without_value_or_default_leaves_the_amount_absent() -> None:
    """No total: the amount is absent, so the required rule makes the sale invalid."""
    got = one(engine(NET), event(shipping=5))
    assert got.outcome == "invalid" and got.errors[0].startswith("amount: no value")


def test_a_term_without_value_takes_the_fields_default() -> None:
    """An absent total gives the field's own default, as any absent source does."""
    text = sale("amount: {add: [$.properties.total], subtract: [$.properties.d], default: 1}")
    assert _body(text, event(total=5))["amount"] == 1


def test_a_non_numeric_term_is_invalid_naming_path_and_value() -> None:
    """A discount of "10%" makes the sale invalid, naming the term's path and value."""
    got = one(engine(NET), event(total=50, discount="10%"))
    assert got.outcome == "invalid"
    assert got.errors == (
        "amount: subtract term 1 is not a number (path $.properties.discount, value '10%')",
    )


def test_a_negative_result_is_refused_by_minor_units() -> None:
    """A discount above the total is a negative amount: invalid, never sent."""
    got = one(engine(NET), event(total=5, discount=10))
    assert got.outcome == "invalid" and "negative" in got.errors[0]


def test_terms_may_be_sums_and_firsts() -> None:
    """A basket total plus shipping read from the first of two places."""
    text = sale(
        """\
        amount:
          add:
            - {sum: {items: $.properties.products, value: price, times: quantity}}
            - {first: [$.properties.shipping, $.properties.delivery], default: 0}
          transform: minor_units
        """
    )
    products = [{"price": 19.99, "quantity": 3}, {"price": "5"}]
    assert _body(text, event(products=products, delivery=4.95))["amount"] == 6992


def test_terms_converting_themselves_give_an_integer_and_no_warning() -> None:
    """Terms each in minor units add to an integer; validate does not warn about it."""
    text = sale(
        """\
        amount:
          add:
            - {path: $.properties.total, transform: minor_units}
            - {path: $.properties.tip_cents, transform: already_minor_units, default: 0}
        """
    )
    assert load(text).issues == []
    assert _body(text, event(total=19.99, tip_cents=100))["amount"] == 2099
    assert load(sale("amount: {add: [$.properties.total]}")).warnings  # not converted


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.decimals(min_value=-(10**6), max_value=10**6, places=3), min_size=1, max_size=4),
    st.lists(st.decimals(min_value=-(10**6), max_value=10**6, places=3), max_size=3),
)
def test_add_matches_exact_decimal_arithmetic(plus: list[Decimal], minus: list[Decimal]) -> None:
    """For any numeric-text terms, the amount is minor_units of the exact decimal result."""
    paths = lambda word, n: ", ".join(f"$.properties.{word}{i}" for i in range(n))  # noqa: E731
    text = sale(
        f"amount: {{add: [{paths('p', len(plus))}], "
        + (f"subtract: [{paths('m', len(minus))}], " if minus else "")
        + "transform: minor_units}"
    )
    props = {f"p{i}": str(v) for i, v in enumerate(plus)}
    props |= {f"m{i}": str(v) for i, v in enumerate(minus)}
    exact = sum(plus, Decimal(0)) - sum(minus, Decimal(0))
    got = one(engine(text), event(**props))
    if exact < 0:
        assert got.outcome == "invalid" and "negative" in got.errors[0]
    elif minor_units(exact) == 0:
        assert got.outcome == "skipped"
    else:
        assert got.body is not None and got.body["amount"] == minor_units(exact)


# --- object ---------------------------------------------------------------------------------

META = _lead(
    """
clickId: {value: cl_1}
metadata:
  object:
    plan: {path: $.context.traits.plan, transform: lower}
    seats: $.context.traits.seats
    tier: {first: [$.context.traits.tier, $.context.traits.level]}
"""
)


def test_object_holds_only_the_keys_that_have_a_value() -> None:
    """Chosen keys only; a key whose source gives nothing is left out; 0 is a value."""
    got = _body(META, _signup(plan="PRO", seats=0, level=2, secret="x"))
    assert got["metadata"] == {"plan": "pro", "seats": 0, "tier": 2}


def test_an_object_with_no_key_left_is_absent() -> None:
    """No key has a value: metadata is left out of the request."""
    assert "metadata" not in _body(META, _signup(plan=""))


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ('{template: "{{ $.a }}"}', "template"),
        ("{sum: {items: $.p, value: price}}", "sum"),
        ("{add: [$.a]}", "add"),
        ("{value: pro}", "value"),
        ("{first: [{value: 1}, {template: '{{ $.a }}'}]}", "first"),
    ],
)
def test_metadata_that_can_never_be_an_object_is_a_load_error(source: str, kind: str) -> None:
    """validate refuses a metadata source that can never give an object, naming file:line."""
    found = errors(_lead(f"clickId: $.c\nmetadata: {source}"))
    assert any(
        e.startswith("m.yaml:9: l.fields.metadata: ") and f"a `{kind}` source never gives" in e
        for e in found
    ), found


# --- when -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "avatar"),
    [
        ({"avatar": "https://cdn.test/a.png"}, "https://cdn.test/a.png"),
        ({"avatar": "http://cdn.test/a.png"}, None),
        (
            {"avatar": "http://cdn.test/a.png", "photo": "https://cdn.test/p.png"},
            "https://cdn.test/p.png",
        ),
        ({"avatar": 7}, None),
    ],
)
def test_a_when_without_path_tests_the_value_and_picks_the_first_that_passes(
    traits: dict[str, Any], avatar: str | None
) -> None:
    """A value test keeps only the values that pass, path by path."""
    text = _lead(
        "clickId: {value: c}\ncustomerAvatar:\n"
        "  paths: [$.context.traits.avatar, $.context.traits.photo]\n"
        '  when: {starts_with: "https://"}'
    )
    assert _body(text, _signup(**traits)).get("customerAvatar") == avatar


def test_a_when_tests_the_value_after_the_sources_own_transforms() -> None:
    """`lower` runs first, so "HTTPS://" passes a lower-case starts_with."""
    text = _lead(
        "clickId: {value: c}\ncustomerAvatar:\n  path: $.context.traits.avatar\n"
        "  transform: lower\n  when: [{starts_with: 'https://'}, {not_empty: true}]"
    )
    assert _body(text, _signup(avatar="HTTPS://X.TEST/A"))["customerAvatar"] == "https://x.test/a"


def test_a_when_with_a_path_tests_the_event_and_a_failed_one_gives_the_default() -> None:
    """A `when` on the event makes the source absent, so its default applies."""
    text = _lead(
        "clickId: {value: c}\ncustomerName:\n  path: $.context.traits.name\n"
        "  when: {path: $.context.traits.consent, equals: true}\n  default: Customer"
    )
    assert _body(text, _signup(name="Ada", consent=True))["customerName"] == "Ada"
    assert _body(text, _signup(name="Ada"))["customerName"] == "Customer"


def test_a_when_nested_in_a_term_decides_that_term_only() -> None:
    """A shipping term that holds only for paid shipping takes its default otherwise."""
    text = sale(
        """\
        amount:
          add:
            - $.properties.total
            - {path: $.properties.shipping, default: 0,
               when: {path: $.properties.free_shipping, not_equals: true}}
          transform: minor_units
        """
    )
    assert _body(text, event(total=10, shipping=5))["amount"] == 1500
    assert _body(text, event(total=10, shipping=5, free_shipping=True))["amount"] == 1000


def test_a_when_mixing_value_and_event_tests_is_a_load_error() -> None:
    """One condition tests either the value or the event: a mix is refused at load."""
    found = errors(
        _lead(
            "clickId:\n  path: $.c\n  when: {any: [{starts_with: cl_}, {path: $.x, exists: true}]}"
        )
    )
    assert any("m.yaml:" in e and "not both" in e for e in found), found


# --- sum, transforms ------------------------------------------------------------------------


def test_a_sum_item_whose_times_is_null_counts_once() -> None:
    """`quantity: null` counts as 1, as a missing quantity does."""
    text = sale(
        "amount: {sum: {items: $.properties.p, value: price, times: quantity}, "
        "transform: minor_units}"
    )
    products = [{"price": 2, "quantity": None}, {"price": 1, "quantity": 2}]
    assert _body(text, event(p=products))["amount"] == 400


@pytest.mark.parametrize(
    ("text", "name", "found"),
    [
        ("a=1; dub_id=cl_9; b=2", "dub_id", "cl_9"),
        ("dub_id=cl%5F9", "dub_id", "cl_9"),
        ('dub_id="cl_9"', "dub_id", "cl_9"),
        ("my_dub_id=x; dub_id_2=y", "dub_id", MISSING),
        ("dub_id=; b=2", "dub_id", MISSING),
        ("a=1;dub_id=cl_9", "dub_id", "cl_9"),
        ("", "dub_id", MISSING),
    ],
)
def test_cookie_finds_the_named_cookie_only(text: str, name: str, found: Any) -> None:
    """The whole name matches; the value is percent-decoded; missing or empty is absent."""
    assert cookie(name)(text, {}) == found


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcdefghij_", min_size=1, max_size=6),
        st.text(min_size=1, max_size=10).filter(lambda v: v.strip() == v),
        min_size=1,
        max_size=5,
    )
)
def test_cookie_reads_back_any_percent_encoded_value(jar: dict[str, str]) -> None:
    """For any cookie jar written as a header, each cookie reads back as its value."""
    header = "; ".join(f"{k}={quote(v, safe='')}" for k, v in jar.items())
    for key, value in jar.items():
        assert cookie(key)(header, {}) == value


@pytest.mark.parametrize(
    ("pattern", "value", "found"),
    [
        ("^([^@]+)@", "ada@example.com", "ada"),
        (r"\d+", "order 123 of 456", "123"),
        ("(x)?y", "y", MISSING),  # the group took part in no match: absent
        ("^z", "abc", MISSING),
    ],
)
def test_regex_gives_the_first_group_or_the_whole_match(
    pattern: str, value: str, found: Any
) -> None:
    """The first capture group when there is one, else the whole match; no match is absent."""
    assert regex(pattern)(value, {}) == found


def test_text_transforms_refuse_non_text() -> None:
    """regex, replace and cookie name the transform and the type they were given."""
    for transform, name in (
        (regex("a"), "regex"),
        (replace("a", "b"), "replace"),
        (cookie("a"), "cookie"),
    ):
        with pytest.raises(TransformError, match=f"{name} needs text, got int"):
            transform(5, {})


def test_replace_replaces_every_match_with_groups() -> None:
    r"""Every match is replaced; \1 is the first group."""
    assert replace(r"(\d)", r"<\1>")("a1b22", {}) == "a<1>b<2><2>"
    assert replace("^order_", "")("order_7", {}) == "7"


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("{regex: '('}", "bad regular expression"),
        (r"{replace: {pattern: 'a', with: '\2'}}", "bad replacement"),
        ("{replace: {pattern: 'a'}}", "replace.with: Field required"),
        ("{cookie: ''}", "at least 1 character"),
        ("{minor_units: {extra_decimals: maybe}}", "'round' or 'refuse'"),
        ("{regex: a, cookie: b}", "a transform is a name"),
        ("{cookie: a, fallback: b}", "takes no other key"),
    ],
)
def test_bad_transforms_are_load_errors_naming_file_line_and_key(
    transform: str, message: str
) -> None:
    """Each new transform is checked at load: `file:line: mapping.key: message`."""
    found = errors(sale(f"amount: {{path: $.a, transform: {transform}}}"))
    assert any(
        e.startswith("m.yaml:") and " s.fields.amount.transform" in e and message in e
        for e in found
    ), found


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("customerName: {add: [$.a]}", "`add` makes a number: only amount and eventQuantity"),
        ("customerName: {first: [{sum: {items: $.p, value: v}}]}", "`sum` makes a number"),
        ("amount: {path: $.a, subtract: [$.b]}", "`subtract` goes with `add`"),
        ("amount: {first: []}", "`first` needs at least one source"),
        ("amount: {first: [{pth: $.a}]}", "unknown key (did you mean 'path'?)"),
        ("amount: {first: [$.a], path: $.b}", "give exactly one of"),
        ("amount: {object: {}}", "`object` needs at least one source"),
    ],
)
def test_misused_sources_are_load_errors(field: str, message: str) -> None:
    """Nested sources are checked at load like top-level ones, each error naming its key."""
    found = errors(sale(field if field.startswith("amount") else f"amount: $.a\n{field}"))
    assert any(e.startswith("m.yaml:") and message in e for e in found), found


def test_the_subtraction_hint_points_at_add_and_subtract() -> None:
    """A path with `-` in it is refused with a hint to `add`/`subtract`."""
    found = errors(sale("amount: {path: '$.properties.total - $.properties.discount'}"))
    assert any("hint: use `add: [...]` and `subtract: [...]`" in e for e in found), found


# --- explain, and Dub's rule on avatars ------------------------------------------------------


def test_explain_shows_each_nested_step() -> None:
    """explain lists each alternative and term with its path, raw value and transforms."""
    lines = explain_text(explain(engine(NET), event(total=50, shipping="4.95", discount="1")))
    text = "\n".join(lines)
    assert "field amount: from add ($.properties.total; $.properties.shipping) subtract" in text
    assert "      add 2: from $.properties.shipping; raw '4.95'; value '4.95'" in text
    assert "minor_units -> 5395" in text
    lines = explain_text(explain(engine(CLICK_FIRST), _signup(cookies="a=1; dub_id=cl_9")))
    text = "\n".join(lines)
    assert "first 1: nothing at $.context.page.url" in text
    assert (
        "first 2: from $.context.traits.cookies; raw 'a=1; dub_id=cl_9'; cookie dub_id -> 'cl_9'"
        in text
    )


def test_explain_shows_a_failed_when() -> None:
    """A value test that failed is shown under the field, with the value it saw."""
    text = _lead(
        "clickId: {value: c}\ncustomerAvatar: {path: $.context.traits.a, when: {starts_with: 'https://'}}"
    )
    lines = explain_text(explain(engine(text), _signup(a="http://x.test/a")))
    assert "      when starts_with 'https://': value 'http://x.test/a': FAILED" in lines


def test_an_avatar_that_is_not_an_http_url_is_dropped_with_a_warning() -> None:
    """customerAvatar must be an http(s) URL: anything else is dropped, the lead still sent."""
    text = _lead("clickId: {value: c}\ncustomerAvatar: $.context.traits.avatar")
    got = one(engine(text), _signup(avatar="javascript:alert(1)"))
    assert got.body is not None and "customerAvatar" not in got.body
    assert got.warnings[0].startswith("customerAvatar: dropped, must be an http(s) URL")


def test_nested_mistakes_are_each_reported_once_at_their_line() -> None:
    """Each mistake inside nested sources is one error, `file:line: mapping.key: message`."""
    text = r"""
        mappings:
          - name: s
            trigger: {event: X}
            action: sale
            fields:
              customerExternalId: $.userId
              amount:
                add:
                  - $.properties.total
                  - {pth: $.properties.shipping}
                subtract: [{path: $.properties.discount, transform: {regex: "("}}]
                transform: minor_units
              customerName:
                first:
                  - {path: $.a, when: {startswith: x}}
                  - {path: $.b, transform: {replace: {pattern: a, with: '\2'}}}
        """
    assert errors(text) == [
        "m.yaml:11: s.fields.amount.add.1.pth: unknown key (did you mean 'path'?)",
        "m.yaml:12: s.fields.amount.subtract.0.transform.regex: bad regular expression '(':"
        " RE2 refuses it: missing ): ( (hint: mapping files use RE2 syntax, which runs in"
        " linear time: no backreferences (\\1, (?P=name)), no lookahead or lookbehind ((?=,"
        " (?!, (?<=, (?<!), no possessive or atomic groups)",
        "m.yaml:16: s.fields.customerName.first.0.when.startswith: unknown key"
        " (did you mean 'starts_with'?)",
        "m.yaml:17: s.fields.customerName.first.1.transform.replace: bad replacement '\\\\2'"
        " for 'a': \\2 names a group the pattern does not have (it has 0)",
    ]


@pytest.mark.parametrize(
    ("field", "accepted"),
    [
        ({"first": [{"path": "$.a", "transform": {"cookie": "dub_id"}}, "$.b"]}, True),
        ({"add": ["$.a"], "subtract": [{"path": "$.b", "default": 0}]}, True),
        ({"path": "$.a", "when": {"starts_with": "https://"}}, True),
        ({"path": "$.a", "transform": {"minor_units": {"extra_decimals": "refuse"}}}, True),
        ({"first": [{"pth": "$.a"}]}, False),
        ({"path": "$.a", "subtract": ["$.b"]}, False),
        ({"path": "$.a", "transform": {"replace": {"pattern": "a"}}}, False),
        ({"path": "$.a", "when": {"starts_with": "x", "pth": "$.b"}}, False),
    ],
)
def test_the_schema_knows_the_new_sources(field: dict[str, Any], accepted: bool) -> None:
    """`bridge schema` accepts the nested sources and transforms, and refuses misspellings."""
    data = {
        "mappings": [
            {
                "name": "s",
                "trigger": {"event": "E"},
                "action": "sale",
                "fields": {"customerExternalId": "$.u", "amount": field},
            }
        ]
    }
    found = list(jsonschema.Draft202012Validator(mapping_schema()).iter_errors(data))
    assert (found == []) is accepted, found
