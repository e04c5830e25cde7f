"""How Dub counts money: which currencies are zero-decimal, and the largest amount it takes.

From Dub's server source (shared/dub/README.md): these 16 codes are counted in
whole units; every other code, the three-decimal ones included, as hundredths.
"""

from __future__ import annotations

import re

ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
MAX_MINOR_UNITS = 9007199254740991  # Number.MAX_SAFE_INTEGER, Dub's upper bound
CURRENCY_RE = re.compile(r"^[a-z]{3}$")
