"""Try a mapping (a true dry run: nothing sent, nothing written), and the mapping sets:
the active one, the published history, a diff between two versions, publish and rollback."""

from __future__ import annotations

import difflib
import json
from typing import Any

from flask import abort, render_template, request

from ...core.errors import BridgeError, MappingFileError, MappingIssue
from ...ledger.base import Browse, MappingSet
from ...mapping.compare import changes
from ...mapping.engine import Engine
from ...mapping.explain import explain
from ...mapping.loader import MappingText, load_texts
from ...service import mapsets
from ...service.mapping_files import read_directory
from ...service.store import stored_engine
from . import auth
from .blueprint import console, service

MAPPING_MAX = 256 * 1024
DIFF_EVENTS = 1000
TRIED_FILE = "tried.yaml"


def _event(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The event in ``text``, or why it is not one."""
    if not text.strip():
        return None, "event: empty: paste one Segment event as JSON"
    if len(text.encode()) > service().settings.max_body_bytes:
        return None, f"event: over {service().settings.max_body_bytes} bytes"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"event: not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
    except RecursionError:
        return None, "event: nested too deeply"
    if not isinstance(value, dict):
        return None, f"event: a JSON object (one Segment event), not {type(value).__name__}"
    return value, None


def _tried(text: str) -> tuple[Engine | None, list[MappingIssue]]:
    if len(text.encode()) > MAPPING_MAX:
        return None, [MappingIssue(TRIED_FILE, None, "", f"over {MAPPING_MAX} bytes")]
    try:
        loaded = load_texts([MappingText(TRIED_FILE, text.encode())], where="the mapping tried")
    except MappingFileError as exc:
        return None, list(exc.issues)
    return loaded.engine, loaded.warnings


@console.route("/try", methods=["GET", "POST"])
def try_mapping() -> Any:
    event_text, mapping_text = "", ""
    if request.method == "GET":
        message_id = request.args.get("message_id")
        ledger = service().ledger
        if message_id and ledger is not None:
            kept = [r.payload for r in ledger.rows_of(message_id) if isinstance(r.payload, dict)]
            if not kept:
                abort(404, f"no stored payload for messageId {message_id!r}")
            event_text = json.dumps(kept[0], indent=2, ensure_ascii=False)
        return render_template("console/try.html", event_text=event_text, mapping_text="")
    event_text = request.form.get("event", "")
    mapping_text = request.form.get("mapping", "")
    event, problem = _event(event_text)
    engine: Engine | None = service().store.engine
    issues: list[MappingIssue] = []
    if mapping_text.strip():
        engine, issues = _tried(mapping_text)
    explained = explain(engine, event) if engine is not None and event is not None else None
    auth.action(
        "try",
        problem or ("mapping errors" if engine is None else "explained"),
        messageId=event.get("messageId") if event else None,
        tried="mapping" if mapping_text.strip() else "active set",
    )
    return render_template(
        "console/try.html",
        event_text=event_text,
        mapping_text=mapping_text,
        problem=problem,
        issues=issues,
        explained=explained,
        tried=bool(mapping_text.strip()),
    ), (400 if problem or engine is None else 200)


def _files(kept: MappingSet | None) -> list[tuple[str, str]]:
    if kept is not None:
        return list(kept.files)
    try:
        sources = read_directory(service().settings.mappings_dir)
    except MappingFileError:
        return []
    return [(s.basename, s.text.decode("utf-8", "replace")) for s in sources]


def _diff(base: MappingSet, head: MappingSet) -> dict[str, Any]:
    """The files' unified diff, and what changes for the last stored events."""
    old, new = dict(base.files), dict(head.files)
    text: list[str] = []
    for name in sorted(set(old) | set(new)):
        text += difflib.unified_diff(
            old.get(name, "").splitlines(keepends=True),
            new.get(name, "").splitlines(keepends=True),
            f"{base.version[:12]}/{name}",
            f"{head.version[:12]}/{name}",
        )
    found: list[dict[str, Any]] = []
    checked = 0
    problem = None
    ledger = service().ledger
    before: Engine | None = None
    after: Engine | None = None
    try:
        before, after = stored_engine(base), stored_engine(head)
    except MappingFileError as exc:
        problem = f"a set does not load with this release: {exc.issues[0] if exc.issues else exc}"
    if ledger is not None and before is not None and after is not None:
        for row in ledger.browse(Browse(limit=DIFF_EVENTS)):
            if not isinstance(row.payload, dict):
                continue
            checked += 1
            lines = list(changes(before.plan(row.payload), after.plan(row.payload)))
            if lines:
                found.append({"messageId": row.message_id, "lines": lines})
    return {"text": "".join(text), "events": found, "checked": checked, "problem": problem}


def _mappings_page(notice: str | None = None, problem: str | None = None, code: int = 200) -> Any:
    svc = service()
    store, ledger = svc.store, svc.ledger
    shared = ledger is not None and ledger.shared_across_processes
    kept = ledger.mapping_set(store.engine.version) if shared and ledger else None
    history = ledger.activations(50) if shared and ledger else []
    sets = ledger.mapping_sets(50) if shared and ledger else []
    diff = None
    base, head = request.args.get("base", ""), request.args.get("head", "")
    if base or head:
        chosen = {s.version: s for s in sets}
        if base not in chosen or head not in chosen:
            abort(400, f"diff: base and head must be kept versions ({base!r}, {head!r})")
        diff = _diff(chosen[base], chosen[head])
    page = render_template(
        "console/mappings.html",
        store=store,
        files=_files(kept),
        history=history,
        sets=sets,
        diff=diff,
        base=base,
        head=head,
        database=svc.settings.mappings_source == "database" and shared,
        notice=notice,
        problem=problem,
    )
    return page, code


@console.get("/mappings")
def mappings() -> Any:
    return _mappings_page()


def _who() -> tuple[str, str | None]:
    author = mapsets.one_line("author", request.form.get("author", "") or "console", 100)
    message = request.form.get("message", "").strip()
    why = mapsets.one_line("message", message, mapsets.MESSAGE_MAX) if message else None
    return author, why


def _database_only() -> Any:
    svc = service()
    ledger = svc.ledger
    if svc.settings.mappings_source != "database" or ledger is None:
        abort(409, "publish and rollback need BRIDGE_MAPPINGS_SOURCE=database")
    return ledger


@console.post("/mappings/publish")
def publish() -> Any:
    ledger = _database_only()
    try:
        author, why = _who()
        done = mapsets.publish(ledger, service().settings.mappings_dir, author, why)
    except mapsets.BadText as exc:
        auth.action("publish", f"refused: {exc}")
        return _mappings_page(problem=str(exc), code=400)
    except MappingFileError as exc:
        auth.action("publish", f"refused: {len(exc.issues)} error(s)")
        return _mappings_page(problem=f"not published: {exc}", code=400)
    except BridgeError as exc:
        auth.action("publish", f"failed: {exc.message}")
        return _mappings_page(problem=exc.message, code=503)
    auth.action("publish", "ok", version=done.version, author=author)
    reload = service().settings.reload_seconds
    return _mappings_page(
        notice=f"published {done.version}: {done.mappings} mapping(s) from {done.files} file(s);"
        f" every instance follows it within {reload:g} s"
    )


@console.post("/mappings/rollback")
def rollback() -> Any:
    ledger = _database_only()
    version = request.form.get("version", "").strip()
    try:
        author, why = _who()
        chosen = mapsets.rollback(ledger, version, author, why)
    except mapsets.BadText as exc:
        return _mappings_page(problem=str(exc), code=400)
    except BridgeError as exc:
        auth.action("rollback", f"refused: {exc.message}", version=version)
        return _mappings_page(problem=exc.message, code=400)
    auth.action("rollback", "ok", version=chosen, author=author)
    return _mappings_page(notice=f"rolled back to {chosen}")
