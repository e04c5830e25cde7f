"""From checked mapping models to the compiled objects the engine runs.

Everything the engine needs per event is decided here, once: paths compiled,
conditions turned into closures, templates parsed, transforms looked up, regex
triggers compiled, and fields ordered (currency before amount).
"""

from __future__ import annotations

import re

from ..dub.endpoints import ENDPOINTS
from . import conditions
from .engine import CompiledMapping
from .fields import CompiledField
from .models import FieldSpec, Mapping
from .paths import cached_path
from .sums import Sum
from .templates import Template
from .transforms import NAMED, Transform, query_param, value_map
from .values import MISSING


def compile_mapping(mapping: Mapping, source: str) -> CompiledMapping:
    fields = [_compile_field(name, spec) for name, spec in mapping.fields.items()]
    # minor_units reads the resolved currency, so currency is resolved first.
    fields.sort(key=lambda f: f.name != "currency")
    trigger = mapping.trigger
    return CompiledMapping(
        mapping.name,
        ENDPOINTS[mapping.action],
        frozenset(trigger.event or ()),
        tuple(conditions.compile_condition(c) for c in trigger.conditions),
        tuple(fields),
        source,
        re.compile(trigger.event_matches) if trigger.event_matches is not None else None,
        tuple(conditions.compile_condition(c) for c in trigger.require),
        mapping.group,
        mapping.trigger.type,
    )


def _compile_field(name: str, spec: FieldSpec) -> CompiledField:
    steps: list[Transform] = []
    names: list[str] = []
    for step in spec.transform:
        if step.name is not None:
            steps.append(NAMED[step.name])
            names.append(step.name)
        elif step.query_param is not None:
            steps.append(query_param(step.query_param))
            names.append(f"query_param {step.query_param}")
        else:
            steps.append(value_map(step.map or {}, step.fallback, step.has_fallback))
            names.append("map")
    computed: Template | Sum | None = None
    if spec.template is not None:
        computed = Template(spec.template)
    elif spec.sum is not None:
        computed = Sum(spec.sum)
    return CompiledField(
        name=name,
        paths=tuple(cached_path(p) for p in spec.paths),
        literal=spec.value,
        default=spec.default if spec.has_default else MISSING,
        transforms=tuple(steps),
        required=spec.required,
        computed=computed,
        compute=(
            computed.render
            if isinstance(computed, Template)
            else computed.total
            if computed is not None
            else None
        ),
        steps=tuple(names),
    )
