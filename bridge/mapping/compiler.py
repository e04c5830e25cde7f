"""From checked mapping models to the compiled objects the engine runs.

Everything the engine needs per event is decided here, once: paths compiled,
conditions turned into closures, templates parsed, transforms looked up, regex
triggers compiled, and fields ordered (currency before amount).
"""

from __future__ import annotations

from ..dub.endpoints import ENDPOINTS
from . import conditions
from .engine import CompiledMapping
from .fields import CompiledField
from .models import Mapping, SourceSpec, TransformStep
from .paths import cached_path
from .sums import Sum
from .templates import Template
from .transforms import (
    NAMED,
    Transform,
    cookie,
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
    return CompiledMapping(
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
