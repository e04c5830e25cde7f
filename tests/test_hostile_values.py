"""Odd values a sender can put in an event never reach Dub as something else: numbers JSON
cannot hold are dropped, long integers keep every digit, unreadable ids stop the event, and
every form of email address is masked."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.jsoncodec import JSONEncodeFailure, RawNumber, dumps, loads_repaired
from bridge.core.masking import mask_emails
from bridge.dub.endpoints import LEAD, SALE
from bridge.dub.fields import Metadata
from bridge.mapping.transforms import NAMED, TransformError
from tests.conftest import DUB, FRESH, sale_ok


def strict_json(text: str | bytes) -> Any:
    """JSON as Dub's reader takes it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def raw_order(message_id: str, order_id: str, user_id: str = '"user_1"', extra: str = "") -> bytes:
    """An order's JSON text, written by hand: the odd values are text no encoder writes."""
    return (
        f'{{"type":"track","event":"Order Completed","messageId":"{message_id}",'
        f'"userId":{user_id},"timestamp":"{FRESH}","properties":{{"order_id":{order_id},'
        f'"revenue":19.99,"currency":"USD"{extra}}}}}'
    ).encode()


def post(client: Any, *events: bytes) -> dict[str, Any]:
    body = b"[" + b",".join(events) + b"]"
    answer = client.post("/segment", data=body, content_type="application/json")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    data: dict[str, Any] = answer.get_json()
    return data


def bodies(dub: responses.RequestsMock) -> list[dict[str, Any]]:
    return [strict_json(call.request.body) for call in dub.calls]


# --- NaN and Infinity -------------------------------------------------------------------------------


def test_nan_and_infinity_in_properties_are_dropped_from_metadata_and_the_sale_sent(
    client: Any, dub: responses.RequestsMock
) -> None:
    """NaN, Infinity and 1e400 in properties: the sale goes to Dub as valid JSON, without them."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    odd = ',"score":NaN,"nested":{"x":Infinity,"y":1},"list":[1,-Infinity,2],"big":1e400'
    answer = post(client, raw_order("m-nan", '"o-1"', extra=odd))
    assert answer["counts"] == {"delivered": 1}
    (body,) = bodies(dub)
    assert body["metadata"] == {
        "order_id": "o-1",
        "revenue": 19.99,
        "currency": "USD",
        "nested": {"y": 1},
        "list": [1, 2],
    }


def test_the_dropped_numbers_are_named_in_a_warning() -> None:
    """The warning names where each dropped number was."""
    value = {"a": RawNumber("NaN"), "b": {"c": [1, RawNumber("-Infinity")]}, "d": 2}
    clean, errors, warnings = SALE.clean({"metadata": value})
    assert errors == [] and clean["metadata"] == {"b": {"c": [1]}, "d": 2}
    assert warnings == [
        "metadata: dropped numbers JSON cannot hold (NaN, Infinity, 1e400) at a, b.c[1]"
    ]


def test_nothing_is_ever_written_as_invalid_json() -> None:
    """A number that is not finite is refused on output, never written as NaN."""
    for text in ("NaN", "Infinity", "-Infinity", "1e400"):
        with pytest.raises(JSONEncodeFailure):
            dumps({"n": RawNumber(text)})


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]).map(RawNumber),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=25,
)


def count_odd(value: Any) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        return 1
    if isinstance(value, list):
        return sum(count_odd(v) for v in value)
    if isinstance(value, dict):
        return sum(count_odd(v) for v in value.values())
    return 0


@given(st.dictionaries(st.text(max_size=4), VALUES, max_size=5))
def test_any_metadata_is_sent_as_valid_json_or_refused(value: dict[str, Any]) -> None:
    """Whatever numbers metadata holds, what is kept writes as strict JSON and holds every
    finite value; each number dropped is named in the warning."""
    clean, note = Metadata().check(value)
    strict_json(dumps(clean))
    assert count_odd(clean) == 0
    odd = count_odd(value)
    if odd:
        assert note is not None and note.startswith("dropped numbers JSON cannot hold")
        assert note.count(",") + 1 >= min(odd, 5)
    else:
        assert clean == value and note is None


# --- integers past 2^53 -----------------------------------------------------------------------------


def test_order_ids_past_2_64_are_two_invoices_not_one(
    client: Any, dub: responses.RequestsMock
) -> None:
    """Two order ids above 2^64 differing in the last digit: two sales, each its own invoiceId
    and customer, digit for digit."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    first, second = "18446744073709551617", "18446744073709551618"
    answer = post(
        client,
        raw_order("m-big-1", first, user_id="36893488147419103233"),
        raw_order("m-big-2", second, user_id="36893488147419103234"),
    )
    assert answer["counts"] == {"delivered": 2}
    sent = sorted((b["invoiceId"], b["customerExternalId"]) for b in bodies(dub))  # any order
    assert sent == [(first, "36893488147419103233"), (second, "36893488147419103234")]


@given(st.integers(min_value=-(10**60), max_value=10**60))
def test_any_integer_reads_exactly_and_becomes_its_own_text(number: int) -> None:
    """An integer of any size is read exactly (bytes or text), and `string` writes its digits."""
    for raw in (f'{{"id": {number}}}'.encode(), f'[{{"id": {number}}}]'):
        value, _ = loads_repaired(raw)
        found = value["id"] if isinstance(value, dict) else value[0]["id"]
        assert type(found) is int and found == number
        assert NAMED["string"](found, {}) == str(number)


def test_an_integer_too_long_for_python_costs_its_event_not_the_body() -> None:
    """5,000 digits: kept as a number read as written, the rest of the body reads."""
    value, _ = loads_repaired(b'[{"id": 1' + b"0" * 5000 + b'}, {"id": 2}]')
    assert isinstance(value[0]["id"], RawNumber) and value[1] == {"id": 2}


@pytest.mark.parametrize("number", [2.0**53, 1e20, -1.2345678901234567e25, math.inf])
def test_string_refuses_a_float_whose_digits_are_lost(number: float) -> None:
    """A float past 2^53 has no exact text: `string` refuses it rather than invent digits."""
    with pytest.raises(TransformError, match="no exact text"):
        NAMED["string"](number, {})


# --- unreadable text in an id -----------------------------------------------------------------------


def test_two_different_invalid_bytes_in_user_ids_are_not_one_customer(
    client: Any, dub: responses.RequestsMock
) -> None:
    """userId "user\\xff" and "user\\xfe" (invalid UTF-8): both invalid, nothing sent, rather
    than one customer "user\\ufffd"."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = post(
        client,
        raw_order("m-ff", '"o-1"', user_id='"user\xff"').replace(b"\xc3\xbf", b"\xff"),
        raw_order("m-fe", '"o-2"', user_id='"user\xfe"').replace(b"\xc3\xbe", b"\xfe"),
    )
    assert answer["counts"] == {"invalid": 2}
    assert all("customerExternalId: holds U+FFFD" in r["reason"] for r in answer["results"])
    assert len(dub.calls) == 0


def test_an_unreadable_invoice_id_makes_the_sale_invalid_though_optional(
    client: Any, dub: responses.RequestsMock
) -> None:
    """A lone surrogate in order_id (invoiceId, an optional field): invalid, not sent without it."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    answer = post(client, raw_order("m-sur", '"ord-\\ud800"'))
    assert answer["counts"] == {"invalid": 1}
    assert answer["results"][0]["reason"].startswith("invoiceId: holds U+FFFD")
    assert len(dub.calls) == 0


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [(SALE, "customerExternalId"), (SALE, "invoiceId"), (LEAD, "customerExternalId")],
)
def test_a_replacement_character_in_an_identity_field_is_an_error(
    endpoint: Any, field: str
) -> None:
    """Whichever the field, optional or not, U+FFFD in an id is an error, never a warning."""
    _, errors, warnings = endpoint.clean({field: "user\ufffd"})
    assert [e.split(":")[0] for e in errors] == [field] and warnings == []


def test_a_replacement_character_elsewhere_is_kept() -> None:
    """A name with an unreadable byte is still sent (with the repair's warning): only ids stop."""
    clean, errors, _ = LEAD.clean({"customerName": "Ren\ufffde", "customerExternalId": "u1"})
    assert errors == [] and clean["customerName"] == "Ren\ufffde"


# --- email masking ----------------------------------------------------------------------------------

LETTERS = st.characters(categories=("L", "N"))
ATEXT = st.one_of(LETTERS, st.sampled_from("!#$%&'*+-/=?^_`{|}~"))
DOT_ATOM = (
    st.lists(st.text(ATEXT, min_size=1, max_size=8), min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda local: local.strip("'"))  # only apostrophes: nothing personal to hide
)
QUOTED = st.text(
    st.characters(exclude_characters='"\\\r\n', exclude_categories=("Cs", "Cc")), max_size=12
).map(lambda text: f'"{text}"')
LABEL = st.text(st.one_of(LETTERS, st.just("-")), min_size=1, max_size=10)
IPV4 = st.lists(st.integers(0, 255), min_size=4, max_size=4).map(
    lambda parts: "[" + ".".join(map(str, parts)) + "]"
)
IPV6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda parts: "[IPv6:" + ":".join(f"{p:x}" for p in parts) + "]"
)
DOMAIN = st.one_of(st.lists(LABEL, min_size=1, max_size=3).map(".".join), IPV4, IPV6)
AROUND = st.text(
    st.characters(exclude_characters="@\"\\'", exclude_categories=("Cs", "Cc")), max_size=20
)


@given(before=AROUND, local=st.one_of(DOT_ATOM, QUOTED), domain=DOMAIN, after=AROUND)
def test_every_form_of_address_is_masked(before: str, local: str, domain: str, after: str) -> None:
    """Non-ASCII or quoted local parts, IDN and IP-literal domains: the local part is replaced
    by its first character and ***, in plain text and inside a JSON log line alike."""
    # Leading apostrophes are kept as they are: a Python repr's quote ('jane@...') looks alike.
    first = local[: len(local) - len(local.lstrip("'")) + 1]
    assert mask_emails(f"{before} {local}@{domain} {after}") == (
        f"{before} {first}***@{domain} {after}"
    )
    line = json.dumps({"msg": f"{before} {local}@{domain}"}, ensure_ascii=False)
    shown, _, rest = json.loads(mask_emails(line))["msg"].rpartition("***@")
    assert rest == domain and f"{before} {first}".startswith(shown)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("jöhn.doe@exämple.com", "j***@exämple.com"),
        ("用户@例子.广告", "用***@例子.广告"),
        ('"john doe"@example.com', '"***@example.com'),
        ("jane@[192.0.2.1]", "j***@[192.0.2.1]"),
        ("jane@[IPv6:2001:db8::1]", "j***@[IPv6:2001:db8::1]"),
        ("'jane@example.com'", "'j***@example.com'"),
        ("o'brien@example.com", "o***@example.com"),
        ("'j***@example.com'", "'j***@example.com'"),
    ],
)
def test_masking_examples(text: str, masked: str) -> None:
    """The forms the attack found unmasked, masked; masked text stays as it is."""
    assert mask_emails(text) == masked


def test_masking_stays_linear_on_long_text_without_an_address() -> None:
    """A megabyte of address-like text with no domain is scanned once, not once per character."""
    for text in ("a'" * 500_000 + "@", '"' * 1_000_000 + "@", "ab" * 500_000):
        assert mask_emails(text) == text
