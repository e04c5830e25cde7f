"""A fixed-seed corpus of Segment events, shaped like what analytics.js sends to a webhook.

Mix (by design, per 100 events): ~15 Order Completed (1-5 products, revenue as float,
string or int, sometimes ``total`` only, USD/EUR/JPY/GBP, string and numeric order ids),
~10 Sign Up / Signed Up (traits; the click id in ``context.traits.clickId`` or in
``integrations["Dub (Actions)"].dub_id``, some organic without), and the rest page,
identify and other track events that no mapping matches. Every event carries the
``context`` analytics.js adds (library, page, userAgent, locale, ...), so sizes are real.
``noise`` sets the share of those unmapped events instead (the same kinds, in the same
proportions among themselves; orders and sign-ups 3:2), for the replay benchmark's
"20% noise" and "all mapped" corpora. Files are written as generated, never held whole.

    python bench/corpus.py OUT.jsonl [--events N] [--seed S] [--noise F] [--gzip]
"""

from __future__ import annotations

import argparse
import gzip
import random
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

DEFAULT_EVENTS = 5000
DEFAULT_SEED = 4  # issue 4
MESSAGE_ID_PREFIX = "ajs-next-"  # + 32 hex digits: fixed width, so loadgen can swap ids

USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
]
LOCALES = ["en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "es-ES"]
PAGES = [
    ("/", "Acme - Home"),
    ("/pricing", "Pricing - Acme"),
    ("/blog/launch-week", "Launch week - Acme blog"),
    ("/products/black-tee", "Black tee - Acme shop"),
    ("/cart", "Your cart - Acme"),
    ("/signup", "Create your account - Acme"),
    ("/docs/getting-started", "Getting started - Acme docs"),
]
PRODUCTS = [
    ("p-507", "TEE-BLK-M", "Black tee", "Apparel", 19.99),
    ("p-508", "HOOD-GRY-L", "Grey hoodie", "Apparel", 54.5),
    ("p-611", "MUG-WHT", "White mug", "Home", 12.0),
    ("p-702", "STK-PACK", "Sticker pack", "Accessories", 4.95),
    ("p-815", "CAP-NVY", "Navy cap", "Apparel", 24.9),
    ("p-902", "BAG-TOTE", "Canvas tote", "Accessories", 18.75),
    ("p-933", "BOOK-API", "The API book", "Books", 39.0),
]
OTHER_TRACK = [
    "Product Viewed",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Products Searched",
    "Button Clicked",
    "Feature Used",
]
# (currency text as sent, weight); lower-case and missing currencies happen in the wild.
CURRENCIES = [("USD", 50), ("EUR", 22), ("JPY", 10), ("GBP", 8), ("usd", 5), (None, 5)]
PROCESSORS = [("Stripe", 45), ("stripe", 10), ("shopify", 20), ("PayPal", 10), (None, 15)]
FIRST = ["Ann", "Bo", "Chen", "Dana", "Emil", "Fatima", "Goro", "Hana", "Ivan", "Jane", "Kofi"]
LAST = ["Doe", "Smith", "Okafor", "Tanaka", "Müller", "García", "Nguyen", "Rossi", "Kowalski"]


class Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        # ms; advances a little per event. A day before now: the bridge refuses events older
        # than its ledger remembers (6 days), and a corpus is measured soon after it is made.
        self.clock = (int(time.time()) // 3600 - 24) * 3_600_000

    def hexid(self, n: int = 32) -> str:
        return "".join(self.r.choices("0123456789abcdef", k=n))

    def token(self, n: int) -> str:
        return "".join(self.r.choices(string.ascii_letters + string.digits, k=n))

    def weighted(self, choices: list[tuple[Any, int]]) -> Any:
        values, weights = zip(*choices, strict=True)
        return self.r.choices(values, weights=weights)[0]

    def iso(self, ms: int) -> str:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

    def person(self) -> dict[str, Any]:
        first, last = self.r.choice(FIRST), self.r.choice(LAST)
        user_id: str | int = f"usr_{self.token(14)}"
        if self.r.random() < 0.15:  # some backends use numeric user ids
            user_id = self.r.randint(10_000, 9_999_999)
        email = f"{first.lower()}.{self.token(5).lower()}@example.com"
        return {"userId": user_id, "name": f"{first} {last}", "email": email}

    def envelope(self, kind: str, person: dict[str, Any] | None) -> dict[str, Any]:
        """The fields analytics.js and Segment put on every event."""
        self.clock += self.r.randint(50, 4000)
        sent = self.clock
        path, title = self.r.choice(PAGES)
        search = "" if self.r.random() < 0.7 else f"?utm_source=dub&via={self.token(6)}"
        event: dict[str, Any] = {
            "type": kind,
            "messageId": MESSAGE_ID_PREFIX + self.hexid(),
            "anonymousId": f"{self.hexid(8)}-{self.hexid(4)}-4{self.hexid(3)}-a{self.hexid(3)}-"
            f"{self.hexid(12)}",
            "channel": "client",
            "context": {
                "ip": f"203.0.113.{self.r.randint(1, 254)}",
                "library": {"name": "analytics.js", "version": "npm:next-1.76.0"},
                "locale": self.r.choice(LOCALES),
                "page": {
                    "path": path,
                    "referrer": self.r.choice(["", "https://www.google.com/", "https://dub.sh/"]),
                    "search": search,
                    "title": title,
                    "url": f"https://acme.example{path}{search}",
                },
                "userAgent": self.r.choice(USER_AGENTS),
                "userAgentData": {
                    "brands": [
                        {"brand": "Chromium", "version": "131"},
                        {"brand": "Not_A Brand", "version": "24"},
                    ],
                    "mobile": False,
                    "platform": "macOS",
                },
                "timezone": "Europe/Berlin",
            },
            "integrations": {},
            "originalTimestamp": self.iso(sent - 3),
            "receivedAt": self.iso(sent + 41),
            "sentAt": self.iso(sent),
            "timestamp": self.iso(sent + 38),
            "writeKey": "wk_" + self.token(24),
            "version": 2,
        }
        if search:
            event["context"]["campaign"] = {"source": "dub", "medium": "referral"}
        if person is not None:
            event["userId"] = person["userId"]
        return event

    def order(self) -> dict[str, Any]:
        guest = self.r.random() < 0.03  # guest checkout: no userId, the bridge reports invalid
        person = None if guest else self.person()
        event = self.envelope("track", person)
        event["event"] = "Order Completed"
        currency = self.weighted(CURRENCIES)
        zero_decimal = currency == "JPY"
        items: list[dict[str, Any]] = []
        subtotal = 0.0
        for _ in range(self.r.randint(1, 5)):
            pid, sku, name, category, price = self.r.choice(PRODUCTS)
            price = float(round(price * 150)) if zero_decimal else price
            quantity = self.r.choice([1, 1, 1, 2, 3])
            subtotal += price * quantity
            items.append(
                {
                    "product_id": pid,
                    "sku": sku,
                    "name": name,
                    "category": category,
                    "brand": "Acme",
                    "price": price,
                    "quantity": quantity,
                    "position": len(items) + 1,
                    "url": f"https://acme.example/products/{pid}",
                    "image_url": f"https://cdn.acme.example/img/{sku.lower()}.jpg",
                }
            )
        revenue: Any = int(subtotal) if zero_decimal else round(subtotal, 2)
        roll = self.r.random()
        if roll < 0.01:
            revenue = 0.0  # a 100% coupon: the bridge skips zero sales
        elif roll < 0.03 and not zero_decimal:
            revenue = round(subtotal * 1.0825, 3)  # un-rounded tax: a third decimal
        elif roll < 0.20:
            revenue = f"{revenue:.2f}" if not zero_decimal else str(revenue)  # string amounts
        shipping = 0 if zero_decimal else self.r.choice([0, 4.99, 9.5])
        properties: dict[str, Any] = {
            "checkout_id": f"chk_{self.token(12)}",
            "order_id": (
                f"ORD-{self.r.randint(10_000, 99_999)}"
                if self.r.random() < 0.8
                else self.r.randint(1000, 999_999)
            ),
            "affiliation": "Acme web shop",
            "shipping": shipping,
            "tax": 0 if zero_decimal else round(subtotal * 0.08, 2),
            "discount": 0,
            "coupon": self.r.choice(["", "", "WELCOME10", "LAUNCH"]),
            "products": items,
        }
        if self.r.random() < 0.9:
            properties["revenue"] = revenue
        else:
            properties["total"] = revenue  # some shops send total only
        if currency is not None:
            properties["currency"] = currency
        processor = self.weighted(PROCESSORS)
        if processor is not None:
            properties["payment_processor"] = processor
        event["properties"] = properties
        if person is not None:
            event["context"]["traits"] = {"email": person["email"], "name": person["name"]}
            if self.r.random() < 0.2:  # direct sale tracking: the click id travels along
                event["context"]["traits"]["clickId"] = self.token(16)
        return event

    def signup(self) -> dict[str, Any]:
        person = self.person()
        event = self.envelope("track", person)
        event["event"] = self.r.choice(["Sign Up", "Signed Up"])
        traits: dict[str, Any] = {"email": person["email"], "name": person["name"]}
        if self.r.random() < 0.3:
            traits["avatar"] = f"https://avatars.example.com/{self.token(10)}.png"
        roll = self.r.random()
        if roll < 0.4:
            traits["clickId"] = self.token(16)
        elif roll < 0.75:
            event["integrations"] = {"Dub (Actions)": {"dub_id": self.token(16)}}
        # else: organic, no click id anywhere (the bridge skips it)
        event["context"]["traits"] = traits
        event["properties"] = (
            {}
            if self.r.random() < 0.1
            else {
                "method": self.r.choice(["email", "google", "github"]),
                "plan": self.r.choice(["free", "pro", "team"]),
                "referrer_code": self.token(6) if self.r.random() < 0.2 else None,
            }
        )
        return event

    def page(self) -> dict[str, Any]:
        event = self.envelope("page", self.person() if self.r.random() < 0.5 else None)
        page = event["context"]["page"]
        event["name"] = page["title"].split(" - ")[0]
        event["properties"] = dict(page)
        return event

    def identify(self) -> dict[str, Any]:
        person = self.person()
        event = self.envelope("identify", person)
        event["traits"] = {
            "email": person["email"],
            "name": person["name"],
            "plan": self.r.choice(["free", "pro", "team"]),
            "createdAt": self.iso(self.clock - 86_400_000),
        }
        return event

    def other_track(self) -> dict[str, Any]:
        event = self.envelope("track", self.person() if self.r.random() < 0.6 else None)
        event["event"] = self.r.choice(OTHER_TRACK)
        pid, sku, name, category, price = self.r.choice(PRODUCTS)
        event["properties"] = {
            "product_id": pid,
            "sku": sku,
            "name": name,
            "category": category,
            "price": price,
            "currency": "USD",
        }
        return event

    def event(self, noise: float | None = None) -> dict[str, Any]:
        if noise is not None:
            return self.noise() if self.r.random() < noise else self.mapped()
        roll = self.r.random()
        if roll < 0.15:
            return self.order()
        if roll < 0.25:
            return self.signup()
        if roll < 0.60:
            return self.page()
        if roll < 0.72:
            return self.identify()
        return self.other_track()

    def mapped(self) -> dict[str, Any]:
        """An event a mapping takes: an order or a sign-up, 15:10 as in the default mix."""
        return self.order() if self.r.random() < 0.6 else self.signup()

    def noise(self) -> dict[str, Any]:
        """An event no mapping takes: page, identify, other track, 35:12:28 as in the mix."""
        roll = self.r.random() * 75
        if roll < 35:
            return self.page()
        return self.identify() if roll < 47 else self.other_track()


def events(
    count: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED, noise: float | None = None
) -> Iterator[dict[str, Any]]:
    gen = Gen(seed)
    for _ in range(count):
        yield gen.event(noise)


def generate(count: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    return list(events(count, seed))


def write(
    path: Path,
    count: int = DEFAULT_EVENTS,
    seed: int = DEFAULT_SEED,
    noise: float | None = None,
    compress: bool = False,
) -> Path:
    """NDJSON (gzip-compressed with ``compress``), written as generated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=6) if compress else path.open("wb") as out:
        batch: list[bytes] = []
        for event in events(count, seed, noise):
            batch.append(orjson.dumps(event) + b"\n")
            if len(batch) >= 1000:
                out.write(b"".join(batch))
                batch = []
        out.write(b"".join(batch))
    return path


def read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--noise", type=float, help="share of events no mapping takes (0-1)")
    parser.add_argument("--gzip", action="store_true", help="write gzip-compressed NDJSON")
    args = parser.parse_args()
    write(args.out, args.events, args.seed, args.noise, args.gzip)
    print(f"wrote {args.events} events to {args.out}")


if __name__ == "__main__":
    main()
