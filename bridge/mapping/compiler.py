"""From checked mapping models to the compiled objects the engine runs.

Everything the engine needs per event is decided here, once: paths compiled,
conditions turned into closures, templates parsed, transforms looked up, regex
triggers compiled, and fields ordered (currency before amount).

Then each mapping gets a fast path for the events that send (``derive_fast_path``): one
Python function written for this mapping alone, from its own rule objects. It reads simple
paths as chained ``dict.get`` calls (their keys taken from the compiled path's steps) and
calls everything else where it lives: each condition's ``holds``, ``is_empty``, each
transform, each Dub field's ``check``, ``Endpoint.request``; no rule is written twice. It
only builds the happy path: the moment anything is not plain (a condition fails, a value is
refused, a Dub rule changes or refuses a value, a zero sale, any error), it hands the event
to the interpreter, which gives the result with its reasons. So its results are the
interpreter's (``tests/test_interpret.py`` compares the two on perturbed golden events,
and ``bridge explain`` is the interpreter's traced walk).

Safety: the text holds only names made here and fixed code; every value from a mapping file
(keys, literals, defaults) reaches the function through its namespace. Each generated
function's syntax tree is checked against an allow-list before it is compiled (no string
constant, no attribute but ``get`` and ``read``, no name but those bound here), so no mapping
can inject code; the check runs on every mapping compiled, the tests' generated ones too.
"""

from __future__ import annotations

import ast
import linecache
from collections.abc import Callable
from itertools import count
from typing import Any

from ..core.outcomes import Outcome
from ..core.results import Result
from ..dub.endpoints import ENDPOINTS
from . import conditions
from .engine import CompiledMapping
from .fields import CompiledField
from .interpret import interpret, zero_sale
from .models import Mapping, SourceSpec, TransformStep
from .paths import cached_path, simple_steps
from .sums import Sum
from .templates import Template
from .transforms import (
    NAMED,
    Transform,
    cookie,
    is_empty,
    minor_units_step,
    query_param,
    regex,
    replace,
    value_map,
)
from .values import MISSING, compile_pattern


def compile_mapping(mapping: Mapping, file: str) -> CompiledMapping:
    fields = [_compile_field(name, spec, spec.required) for name, spec in mapping.fields.items()]
    # minor_units reads the resolved currency, so currency is resolved first.
    fields.sort(key=lambda f: f.name != "currency")
    trigger = mapping.trigger
    compiled = CompiledMapping(
        mapping.name,
        ENDPOINTS[mapping.action],
        frozenset(trigger.event or ()),
        tuple(conditions.compile_condition(c) for c in trigger.conditions),
        tuple(fields),
        file,
        compile_pattern(trigger.event_matches) if trigger.event_matches is not None else None,
        tuple(conditions.compile_condition(c) for c in trigger.require),
        mapping.group,
        mapping.trigger.type,
    )
    object.__setattr__(compiled, "untraced", derive_fast_path(compiled))
    return compiled


def _compile_field(name: str, spec: SourceSpec, required: bool = False) -> CompiledField:
    """A source, and every source nested in it, compiled; ``name`` is the Dub field's."""
    steps: list[Transform] = []
    names: list[str] = []
    for step in spec.transform:
        transform, label = _compile_transform(step)
        steps.append(transform)
        names.append(label)
    computed: Template | Sum | None = None
    if spec.template is not None:
        computed = Template(spec.template)
    elif spec.sum is not None:
        computed = Sum(spec.sum)
    nested = spec.first or spec.add or ()
    if spec.first is not None and all(_plain(part) for part in spec.first):
        # `first` of bare paths reads exactly as `paths` does: compiled as that.
        spec = spec.model_copy(update={"paths": tuple(p for s in spec.first for p in s.paths)})
        nested = ()
    keys = tuple(spec.object or ())
    if spec.object is not None:
        nested = tuple(spec.object.values())
    # A `when` test without a path tests the source's value; one with paths, the event.
    checks = tuple(conditions.compile_condition(c) for c in spec.when if c.without_path())
    when = tuple(conditions.compile_condition(c) for c in spec.when if not c.without_path())
    return CompiledField(
        name=name,
        paths=tuple(cached_path(p) for p in spec.paths),
        literal=spec.value,
        default=spec.default if spec.has_default else MISSING,
        transforms=tuple(steps),
        required=required,
        computed=computed,
        compute=(
            computed.render
            if isinstance(computed, Template)
            else computed.total
            if computed is not None
            else None
        ),
        steps=tuple(names),
        kind="paths" if spec.paths else spec.kind,
        parts=tuple(_compile_field(name, part) for part in nested),
        minus=tuple(_compile_field(name, part) for part in spec.subtract or ()),
        keys=keys,
        when=when,
        checks=checks,
    )


def _plain(spec: SourceSpec) -> bool:
    """A source that is bare paths: no default, transform or `when` of its own."""
    return spec.kind == "paths" and not (spec.transform or spec.has_default or spec.when)


def _compile_transform(step: TransformStep) -> tuple[Transform, str]:
    """A transform step as a function, and the name ``bridge explain`` shows for it."""
    if step.name is not None:
        return NAMED[step.name], step.name
    if step.query_param is not None:
        return query_param(step.query_param), f"query_param {step.query_param}"
    if step.regex is not None:
        return regex(step.regex), f"regex {step.regex}"
    if step.cookie is not None:
        return cookie(step.cookie), f"cookie {step.cookie}"
    if step.replace is not None:
        rule = step.replace
        return replace(rule.pattern, rule.with_), f"replace {rule.pattern} with {rule.with_}"
    if step.minor_units is not None:
        how = step.minor_units.extra_decimals
        return minor_units_step(how), f"minor_units (extra decimals: {how})"
    return value_map(step.map or {}, step.fallback, step.has_fallback), "map"


# --- the fast path ---------------------------------------------------------------------------

FastPath = Callable[[dict[str, Any], "str | None", "str | None"], Result]
_FUNCTIONS = count(1)
# What a generated function may hold: statements and expressions of the shapes written below.
_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.Return, ast.If,
    ast.Try, ast.ExceptHandler, ast.Name, ast.Load, ast.Store, ast.Call, ast.keyword,
    ast.Attribute, ast.Subscript, ast.Tuple, ast.Dict, ast.Compare, ast.Is, ast.IsNot, ast.Eq,
    ast.UnaryOp, ast.Not, ast.BoolOp, ast.And, ast.IfExp, ast.Constant,
)  # fmt: skip
_ATTRIBUTES = frozenset({"get", "read"})
_KEYWORDS = frozenset({"request_path", "body", "request_method"})
_FIXED_NAMES = frozenset(
    {"event", "message_id", "event_name", "body", "clean", "value", "read", "note", "method",
     "path", "sent", "type", "dict", "Exception"}
)  # fmt: skip


class UnsafeFastPath(AssertionError):
    """A generated function broke the allow-list: a bug in this module, never a user's."""


def derive_fast_path(mapping: CompiledMapping) -> FastPath:
    """``mapping``'s untraced result as one function (the interpreter's, when nothing sends)."""
    writer = _Writer(mapping)
    text = writer.function()
    tree = ast.parse(text)
    check_allowed(tree, frozenset(writer.namespace) | frozenset(writer.nodes.values()))
    filename = f"<fast path {next(_FUNCTIONS)}>"
    # Registered, so a traceback through the function shows its lines.
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    exec(compile(tree, filename, "exec"), writer.namespace)  # noqa: S102 - checked above
    function: FastPath = writer.namespace["plan"]
    return function


def check_allowed(tree: ast.AST, bound: frozenset[str]) -> None:
    """Refuse a generated tree that holds anything but the shapes ``_Writer`` writes."""
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise UnsafeFastPath(f"{type(node).__name__} in a generated function")
        if isinstance(node, ast.Constant) and node.value is not None:
            raise UnsafeFastPath(f"constant {node.value!r} in a generated function")
        if isinstance(node, ast.Attribute) and node.attr not in _ATTRIBUTES:
            raise UnsafeFastPath(f"attribute {node.attr!r} in a generated function")
        if isinstance(node, ast.keyword) and node.arg not in _KEYWORDS:
            raise UnsafeFastPath(f"keyword {node.arg!r} in a generated function")
        if isinstance(node, ast.Name) and node.id not in bound and node.id not in _FIXED_NAMES:
            raise UnsafeFastPath(f"name {node.id!r} in a generated function")
        if isinstance(node, ast.FunctionDef) and node.name != "plan":
            raise UnsafeFastPath(f"function {node.name!r} in a generated function")


class _Writer:
    """The text of one mapping's fast path, and the values its names stand for."""

    def __init__(self, mapping: CompiledMapping):
        self.mapping = mapping
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "MISSING": MISSING,
            "is_empty": is_empty,
            "interpret": interpret,
            "mapping": mapping,
            "Result": Result,
            "READY": Outcome.READY,
        }
        # Path prefixes that several paths share (``$.context.traits``): read once, into
        # a local variable each, before the fields.
        self.nodes: dict[tuple[str, ...], str] = {}

    def bind(self, prefix: str, value: Any) -> str:
        """A fresh name bound to ``value``: ``prefix`` is this module's word or a Dub field's
        name (an identifier from the endpoint's table, never a mapping file's text)."""
        name = f"{prefix}_{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def add(self, depth: int, *lines: str) -> None:
        self.lines += ["    " * depth + line for line in lines]

    def function(self) -> str:
        mapping = self.mapping
        name, action = self.bind("mapping_name", mapping.name), self.bind("action", mapping.action)
        hand_over = "return interpret(mapping, event, message_id, event_name)"
        self.add(0, "def plan(event, message_id, event_name):", "    try:")
        for condition in (*mapping.conditions, *mapping.require):
            self.add(2, f"if not {self.bind('holds', condition.holds)}(event):", f"    {hand_over}")
        self._shared_prefixes()
        self.add(2, "body = {}", "clean = {}")
        checks = mapping.endpoint.field_checks
        for field, required in mapping.planned:
            self._field(field, required, checks[field.name], hand_over)
        self.add(1, "except Exception:", f"    {hand_over}")
        self.add(1, f"if {self.bind('zero_sale', zero_sale)}({action}, clean):", f"    {hand_over}")
        self.add(1, f"method, path, sent = {self.bind('request', mapping.endpoint.request)}(clean)")
        self.add(1, f"return Result(message_id, event_name, {name}, {action}, READY,")
        self.add(2, "request_path=path, body=clean, request_method=method)")
        return "\n".join(self.lines) + "\n"

    def _field(self, field: CompiledField, required: bool, check: Any, hand_over: str) -> None:
        """The field's value into ``body``, its Dub-checked value into ``clean``."""
        key = self.bind(f"key_{field.name}", field.name)
        if _by_paths(field):
            self.add(2, "value = MISSING")
            for number, path in enumerate(field.paths):
                if number:
                    self.add(2, "if value is MISSING:")
                self._path(3 if number else 2, field, path)
            if field.default is not MISSING:
                default = self.bind(f"default_{field.name}", field.default)
                self.add(2, "if value is MISSING:", f"    value = {default}")
        else:  # the other sources, read by the interpreter's own method
            reader = self.bind(f"source_{field.name}", field.read)
            self.add(2, f"value, read = {reader}(event, body, None)")
        self.add(2, "if value is not MISSING:", f"    body[{key}] = value")
        self.add(3, f"value, note = {self.bind(f'check_{field.name}', check)}(value)")
        self.add(3, "if note is not None:", f"    {hand_over}")
        self.add(3, f"clean[{key}] = value")
        if required:
            self.add(2, "else:", f"    {hand_over}")

    def _read_paths(self) -> list[tuple[str, ...]]:
        """The steps of every path the fast path reads by name, with repeats."""
        found = []
        for field, _ in self.mapping.planned:
            if _by_paths(field):
                found += [steps for steps in map(_named_steps, field.paths) if steps]
        return found

    def _shared_prefixes(self) -> None:
        """A local variable for each prefix two or more paths begin with."""
        uses: dict[tuple[str, ...], int] = {}
        for steps in self._read_paths():
            for end in range(1, len(steps)):
                uses[steps[:end]] = uses.get(steps[:end], 0) + 1
        for prefix in sorted((p for p, n in uses.items() if n > 1), key=len):
            node = self.nodes[prefix] = f"node_{len(self.nodes)}"
            key = self.bind("step", prefix[-1])
            parent = self.nodes.get(prefix[:-1])
            if parent is None:
                self.add(2, f"{node} = event.get({key})")
            else:
                self.add(2, f"{node} = {parent}.get({key}) if type({parent}) is dict else None")

    def _path(self, depth: int, field: CompiledField, path: Any) -> None:
        """``value`` from this path when it holds one, through the field's transforms."""
        steps = _named_steps(path)
        if steps:
            shared = max((n for n in range(1, len(steps)) if steps[:n] in self.nodes), default=0)
            *middle, last = [self.bind(f"step_{field.name}", step) for step in steps[shared:]]
            node = self.nodes[steps[:shared]] if shared else "event"  # the event is a dict
            for key in middle:
                got = f"{node}.get({key})"
                self.add(depth, f"read = {got if node == 'event' else _if_dict(node, got, 'None')}")
                node = "read"
            got = f"{node}.get({last}, MISSING)"
            self.add(depth, f"read = {got if node == 'event' else _if_dict(node, got, 'MISSING')}")
        else:
            self.add(depth, f"read = {self.bind(f'path_{field.name}', path.first)}(event)")
        self.add(depth, "if read is not MISSING and not is_empty(read):")
        for number, transform in enumerate(field.transforms):
            name = self.bind(f"transform_{field.name}", transform)
            if number:
                self.add(depth + 1, "if read is not MISSING:")
                self.add(depth + 2, f"read = {name}(read, body)")
            else:
                self.add(depth + 1, f"read = {name}(read, body)")
        self.add(depth + 1, "value = read")


def _by_paths(field: CompiledField) -> bool:
    """A source the fast path reads itself: paths only, no `when` test."""
    return field.kind == "paths" and not field.when and not field.checks


def _named_steps(path: Any) -> tuple[str, ...] | None:
    """A path of up to three names (``$.context.traits.email``), which reads as ``get``s."""
    steps = simple_steps(path.text)
    if steps and len(steps) <= 3 and all(isinstance(step, str) for step in steps):
        return tuple(str(step) for step in steps)
    return None


def _if_dict(node: str, got: str, otherwise: str) -> str:
    return f"{got} if type({node}) is dict else {otherwise}"
