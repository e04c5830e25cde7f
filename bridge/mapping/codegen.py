"""Each mapping compiled, once at load, into one Python function of its own.

The engine runs a mapping on every event it takes, so the generic loop (for each field:
call its resolver, walk each path, check emptiness, call its Dub rule) is written out
here for this mapping alone: simple paths become chained ``dict.get`` look-ups (a prefix
that several paths share, such as ``$.context.traits``, is looked up once), the loops
over fields and paths are unrolled, a value a Dub rule keeps as it is skips the rule's
call, and every decision that does not depend on the event is made now.

Safety: the generated text holds only names made here (``k3``, ``p14``...) and fixed
code. Everything that comes from a mapping file (field names, path keys, literals,
defaults, messages) reaches the function through its namespace, never through the
text, so no mapping can inject code. ``tests/test_codegen.py`` checks this, and holds
the generated functions to the generic path (``CompiledField.resolve`` and
``Endpoint.clean``) on generated events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..dub.currencies import CURRENCY_RE, MAX_MINOR_UNITS
from ..dub.endpoints import rejection
from ..dub.fields import (
    EMAIL_RE,
    METADATA_MAX,
    NAME_MAX,
    Amount,
    Currency,
    Email,
    FieldRejected,
    Identity,
    IdentityRejected,
    Metadata,
    OneOf,
    Quantity,
    Rule,
    Text,
)
from ..jsoncodec import REPLACEMENT, JSONEncodeFailure, dumps
from ..outcomes import Outcome
from ..results import Result, planned
from .fields import CompiledField, FieldProblem
from .paths import PathEvalError, simple_steps
from .transforms import READS_FIELDS, is_empty
from .values import MISSING

if TYPE_CHECKING:
    from .conditions import Condition
    from .engine import CompiledMapping

Apply = Callable[[Mapping[str, Any], "str | None", str], Result]
ZERO_SALE = "amount is 0: Dub records nothing for a zero sale"
Keys = tuple[str, ...]

# A lone transform that a text value goes through as a str method (or unchanged): what
# transforms.py's functions do to an exact str, which the test suite holds them to.
_TEXT_STEPS = {("string",): "", ("lower",): "lower", ("upper",): "upper", ("trim",): "strip"}
# Not empty, as transforms.is_empty says, with text (the usual case) tested inline.
_PRESENT = (
    "{v} is not MISSING and {v} is not None"
    " and ({v}.strip() if type({v}) is str else not is_empty({v}))"
)


def _metadata_fits(value: Any) -> bool:
    """Under Dub's limit for sure: UTF-8 bytes are never fewer than UTF-16 units."""
    try:
        return type(value) is dict and len(dumps(value)) <= METADATA_MAX
    except JSONEncodeFailure:
        return False  # Metadata.check refuses it, with its message


class _Writer:
    """The text of one mapping's function and the values its names stand for."""

    def __init__(self, mapping: CompiledMapping):
        self.mapping = mapping
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "MISSING": MISSING,
            "planned": planned,
            "FieldProblem": FieldProblem,
            "FieldRejected": FieldRejected,
            "IdentityRejected": IdentityRejected,
            "rejection": rejection,
            "is_empty": is_empty,
            "metadata_fits": _metadata_fits,
            "SKIPPED": Outcome.SKIPPED,
            "INVALID": Outcome.INVALID,
            "READY": Outcome.READY,
        }
        self.nodes: dict[Keys, str] = {}  # shared path prefixes: their variable

    def name(self, prefix: str, value: Any) -> str:
        """A fresh name bound to ``value`` in the function's namespace."""
        key = f"{prefix}{len(self.namespace)}"
        self.namespace[key] = value
        return key

    def add(self, indent: int, *lines: str) -> None:
        self.lines += ["    " * indent + line for line in lines]

    def function(self) -> str:
        mapping = self.mapping
        head = f"message_id, event_name, {self.name('m', mapping.name)}, "
        head += self.name("a", mapping.action)
        self.namespace["fail"] = _failure(mapping.name, mapping.action)
        self.add(0, "def apply(event, message_id, event_name):", "    try:")
        self._shared_prefixes()
        for condition in mapping.conditions:
            why = self.name("why", condition.why_not)
            self._condition(condition)
            self.add(3, f"return planned({head}, SKIPPED, None, None, (), (), {why}(event))")
        # Tuples, not lists: nothing is allocated unless a problem is found.
        self.add(2, "body, clean = {}, {}", "errors = warnings = rule_errors = rule_warnings = ()")
        for index, field in enumerate(mapping.fields):
            later = mapping.fields[index + 1 :]
            kept = any(step in READS_FIELDS for f in later for step in f.steps)
            self._field(field, kept)
        self.add(1, "except Exception as exc:", f"    return fail({head}, exc)")
        self.add(1, "noted = warnings + rule_warnings")
        self.add(1, "if errors or rule_errors:")
        self.add(2, f"return planned({head}, INVALID, None, None, errors + rule_errors, noted)")
        if mapping.action == "sale":
            zero = self.name("reason", ZERO_SALE)
            self.add(1, 'if clean.get("amount") == 0:')
            self.add(2, f"return planned({head}, SKIPPED, None, None, (), noted, {zero})")
        path = self.name("path", mapping.endpoint.path)
        self.add(1, f"return planned({head}, READY, {path}, clean, (), noted)")
        return "\n".join(self.lines) + "\n"

    def _condition(self, condition: Condition) -> None:
        """``if not <condition>:``, its value read inline when its paths are names only."""
        keys = [_keys(path.text) for path in condition.paths]
        if condition.test is None or not keys or None in keys:
            self.add(2, f"if not {self.name('holds', condition.holds)}(event):")
            return
        # conditions._first: the first value that is not empty, else MISSING
        for number, path in enumerate(keys):
            assert path is not None
            self._walk(2 + number, "c", path, "MISSING")
            self.add(2 + number, f"if not ({_PRESENT.format(v='c')}):")
        self.add(2 + len(keys), "c = MISSING")
        self.add(2, f"if not {self.name('test', condition.test)}(c):")

    def _read_paths(self) -> list[Keys]:
        """The name-only paths this function reads (conditions' and fields')."""
        texts = [p.text for c in self.mapping.conditions if c.test is not None for p in c.paths]
        for field in self.mapping.fields:
            texts += [p.text for p in field.paths] if field.compute is None else []
        return [keys for keys in map(_keys, texts) if keys is not None]

    def _shared_prefixes(self) -> None:
        """Look up once, up front, each path prefix that two or more paths walk."""
        counts: Counter[Keys] = Counter()
        for keys in self._read_paths():
            counts.update(keys[:size] for size in range(1, len(keys) + 1))
        for keys in sorted(k for k, n in counts.items() if n > 1):  # shorter ones first
            node = f"n{len(self.nodes)}"
            self._walk(2, node, keys, "None")
            self.nodes[keys] = node

    def _walk(self, indent: int, target: str, keys: Keys, missing: str) -> None:
        """``target`` = the value at ``keys`` (``missing`` when absent), from the deepest
        shared prefix already looked up. A prefix holds None when absent, as JSON null:
        a field takes both for no value."""
        start, rest = "event", keys
        for size in range(len(keys), 0, -1):
            if keys[:size] in self.nodes:
                start, rest = self.nodes[keys[:size]], keys[size:]
                break
        if not rest:
            self.add(indent, f"{target} = {start}")
            return
        names = [self.name("p", key) for key in rest]
        default = ", MISSING" if missing == "MISSING" else ""
        if start == "event":  # an event is always a dict
            if len(names) == 1:
                self.add(indent, f"{target} = event.get({names[0]}{default})")
                return
            self.add(indent, f"node = event.get({names[0]})")
            start, names = "node", names[1:]
        for name in names[:-1]:
            self.add(indent, f"node = {start}.get({name}) if type({start}) is dict else None")
            start = "node"
        last = names[-1]
        self.add(
            indent,
            f"{target} = {start}.get({last}{default}) if type({start}) is dict else {missing}",
        )

    def _field(self, field: CompiledField, kept: bool) -> None:
        """One field: resolve into ``v`` (from ``where``), then Dub's rule, into ``clean``.

        ``kept``: a later field's transform reads this one's resolved value from ``body``.
        """
        spec = self.mapping.endpoint.fields[field.name]
        required = field.name in self.mapping.required
        key = self.name("k", field.name)
        self.add(2, "try:")
        self._resolve(field, 3)
        self.add(2, "except FieldProblem as exc:")
        self.add(3, "errors += (str(exc),)" if required else 'warnings += (f"dropped {exc}",)')
        self.add(2, "else:", "    if v is MISSING:")
        if required:
            missing = f"{field.name}: no value (paths tried: {field.tried})"
            self.add(4, f"errors += ({self.name('missing', missing)},)")
        else:
            self.add(4, "pass")
        fatal = spec.fatal or required
        problems = "rule_errors" if fatal else "rule_warnings"
        self.add(3, "else:")
        if kept:
            self.add(4, f"body[{key}] = v")
        indent = 4
        accepts = self._accepts(spec.rule)
        if accepts is not None:  # a value the rule keeps as it is skips the call
            self.add(4, f"if {accepts}:", f"    clean[{key}] = v", "else:")
            indent = 5
        check = self.name("check", spec.rule.check)
        self.add(indent, "try:", f"    cleaned, note = {check}(v)")
        if not fatal:  # an unreadable id is an error even in an optional field
            self.add(indent, "except IdentityRejected as exc:")
            fatal_problem = f"rejection({key}, v, where, exc, dropped=False)"
            self.add(indent + 1, f"rule_errors += ({fatal_problem},)")
        self.add(indent, "except FieldRejected as exc:")
        self.add(
            indent + 1, f"{problems} += (rejection({key}, v, where, exc, dropped={not fatal}),)"
        )
        self.add(indent, "else:", "    if note:")
        self.add(indent + 2, f'rule_warnings += (f"{{{key}}}: {{note}}",)')
        self.add(indent + 1, f"clean[{key}] = cleaned")

    def _accepts(self, rule: Rule) -> str | None:
        """An expression true only for a value ``rule.check`` returns unchanged, with no note."""
        if isinstance(rule, Text):
            test = "type(v) is str" if rule.empty_ok else "type(v) is str and v"
            if isinstance(rule, Identity):
                test += f" and {self.name('replacement', REPLACEMENT)} not in v"
            # Up to half the limit no text is over it, whatever UTF-16 units each char takes.
            return test if rule.max_len is None else f"{test} and len(v) <= {rule.max_len // 2:d}"
        if isinstance(rule, Amount):
            return f"type(v) is int and 0 <= v <= {MAX_MINOR_UNITS:d}"
        if isinstance(rule, Quantity):
            return "type(v) is int and 1 <= v <= 100"
        if isinstance(rule, OneOf) and all(type(c) is str for c in rule.choices):
            return f"type(v) is str and v in {self.name('choices', frozenset(rule.choices))}"
        if isinstance(rule, Email):  # up to 50 characters, never over 100 UTF-16 units
            match = self.name("email", EMAIL_RE.match)
            return f"type(v) is str and len(v) <= {NAME_MAX // 2:d} and {match}(v)"
        if isinstance(rule, Currency):
            return f"type(v) is str and {self.name('currency', CURRENCY_RE.match)}(v)"
        if isinstance(rule, Metadata):
            return "metadata_fits(v)"
        return None

    def _resolve(self, field: CompiledField, indent: int) -> None:
        """``CompiledField.resolve`` written out: sets ``v`` and ``where``."""
        if field.compute is not None:
            self.add(indent, f"v, where = {self.name('resolve', field.resolve)}(event, body)")
            return
        if not field.paths:  # a literal: as resolve() gives it, transforms not applied
            self.add(indent, f"v, where = {self.name('literal', field.literal)}, None")
            return
        transform = self.name("transform", field.transformer()) if field.transforms else None
        self.add(indent, "where = None")
        for number, path in enumerate(field.paths):
            inner = indent
            if number:
                self.add(indent, "if where is None:")
                inner += 1
            keys = _keys(path.text)
            if keys is None:
                self.add(inner, f"v = {self.name('first', path.first)}(event)")
            else:
                self._walk(inner, "v", keys, "MISSING")
            text = self.name("text", path.text)
            self.add(inner, f"if {_PRESENT.format(v='v')}:")
            if transform is None:
                self.add(inner + 1, f"where = {text}")
                continue
            if field.steps in _TEXT_STEPS:  # text, the usual case, without a call
                method = _TEXT_STEPS[field.steps]
                self.add(
                    inner + 1,
                    "if type(v) is str:",
                    f"    {f'v = v.{method}()' if method else 'pass'}",
                )
                self.add(inner + 1, "else:", f"    v = {transform}(v, body, {text})")
            else:
                self.add(inner + 1, f"v = {transform}(v, body, {text})")
            self.add(inner + 1, "if v is not MISSING:", f"    where = {text}")
        self.add(indent, "if where is None:", f"    v = {self.name('default', field.default)}")


def _keys(text: str) -> Keys | None:
    """The names a path walks, when it is names only (no index, filter or wildcard)."""
    steps = simple_steps(text)
    if not steps or not all(isinstance(step, str) for step in steps):
        return None
    return tuple(str(step) for step in steps)


def _failure(mapping: str, action: str) -> Callable[..., Result]:
    def fail(message_id: str | None, event_name: str, _m: str, _a: str, exc: Exception) -> Result:
        if isinstance(exc, PathEvalError):
            errors = (str(exc),)
        else:  # a bug must cost this (event, mapping), not the batch
            text = f"mapping {mapping!r} failed on this event: {type(exc).__name__}: {exc}"
            errors = (text[:300],)
        return Result(message_id, event_name, mapping, action, Outcome.INVALID, errors=errors)

    return fail


def build_apply(mapping: CompiledMapping) -> tuple[Apply, str]:
    """(the mapping's function, its source text, for tests and for reading)."""
    writer = _Writer(mapping)
    text = writer.function()
    code = compile(text, f"<mapping {mapping.name!r}>", "exec")
    exec(code, writer.namespace)  # noqa: S102 - the text is ours alone: see the docstring
    function: Apply = writer.namespace["apply"]
    return function, text
