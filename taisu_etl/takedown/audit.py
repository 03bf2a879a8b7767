"""The audit trail of takedown requests, read back from the ledger for people (and --json)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, release, sample, takedown_match, takedown_object, takedown_release, takedown_request
from taisu_etl.takedown.requests import get_request


def list_requests(ledger: Ledger, status: str | None = None) -> list[dict[str, Any]]:
    """Requests, newest first, each with how many samples it matched."""
    tr, m = takedown_request.c, takedown_match.c
    matched = sa.select(sa.func.count()).where(m.takedown_id == tr.id).scalar_subquery()
    query = sa.select(tr.id, tr.received_at, tr.status, tr.kind, tr.value, tr.requester, tr.status_detail,
                      matched.label("samples")).order_by(tr.id.desc())
    if status:
        query = query.where(tr.status == status)
    return ledger.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])


def audit_trail(ledger: Ledger, request_id: int) -> dict[str, Any]:
    """Everything the ledger knows about one request: the request, matches, objects, releases, blocklist."""
    req = get_request(ledger, request_id)
    m, o, r, b = takedown_match.c, takedown_object.c, takedown_release.c, blocklist.c

    def run(conn: sa.Connection) -> dict[str, Any]:
        matches = [dict(x) for x in conn.execute(
            sa.select(m.sample_id, sample.c.url_id, sample.c.url, sample.c.sha256, m.how, m.distance, m.matched_at)
            .join(sample, sample.c.id == m.sample_id).where(m.takedown_id == request_id).order_by(m.sample_id)).mappings()]
        objs = [dict(x) for x in conn.execute(
            sa.select(takedown_object).where(o.takedown_id == request_id).order_by(o.kind, o.object_key)).mappings()]
        rels = [dict(x) for x in conn.execute(
            sa.select(release.c.name, r.action, r.from_version, r.to_version, r.samples_removed, r.shards_rewritten, r.created_at)
            .join(release, release.c.id == r.release_id).where(r.takedown_id == request_id).order_by(release.c.name)).mappings()]
        blocked = [dict(x) for x in conn.execute(
            sa.select(b.kind, b.value, b.sample_id, b.created_at).where(b.takedown_id == request_id).order_by(b.kind, b.value)).mappings()]
        return {"request": req, "matches": matches, "objects": objs, "releases": rels, "blocklist": blocked}

    return ledger.read(run)


def format_trail(trail: dict[str, Any]) -> str:
    req = trail["request"]
    lines = [
        f"takedown request {req['id']}: {req['kind']} {req['value']}",
        f"  requester:  {req['requester']}" + (f" <{req['contact']}>" if req.get("contact") else "")
        + (f"  reference: {req['reference']}" if req.get("reference") else ""),
        f"  reason:     {req.get('reason') or '-'}   channel: {req.get('channel') or '-'}",
        f"  status:     {req['status']}" + (f" ({req['status_detail']})" if req.get("status_detail") else ""),
        f"  received {req['received_at']}, matched {req.get('matched_at') or '-'}, processed {req.get('processed_at') or '-'}, "
        f"verified {req.get('verified_at') or '-'}",
    ]
    how = Counter(x["how"] for x in trail["matches"])
    lines.append(f"  matches: {len(trail['matches'])} sample(s) ({', '.join(f'{k} {n}' for k, n in sorted(how.items())) or 'none'})")
    for x in trail["matches"][:20]:
        dist = f" distance {x['distance']}" if x["distance"] is not None else ""
        lines.append(f"    {x['url_id']}  {x['how']}{dist}  {x['url'] or x['sha256'] or ''}")
    if len(trail["matches"]) > 20:
        lines.append(f"    ... {len(trail['matches']) - 20} more")
    lines.append(f"  objects: {len(trail['objects'])}")
    for x in trail["objects"][:30]:
        check = (f"verified {x['versions_left']} version(s) left" if x["verified_at"] is not None else "not verified yet")
        lines.append(f"    {x['kind']:<12} {x['action']:<9} {x['versions_deleted']} version(s) deleted, {check}: {x['object_key']}")
    if len(trail["objects"]) > 30:
        lines.append(f"    ... {len(trail['objects']) - 30} more")
    lines.append(f"  releases: {len(trail['releases'])}")
    for x in trail["releases"]:
        to = f" -> version {x['to_version']}" if x["to_version"] is not None else ""
        lines.append(f"    {x['name']}: {x['action']} (version {x['from_version']}{to}), {x['samples_removed']} sample(s), "
                     f"{x['shards_rewritten']} shard(s) rewritten")
    lines.append(f"  blocklist: {len(trail['blocklist'])} entr(ies): "
                 + ", ".join(f"{k} {n}" for k, n in sorted(Counter(x['kind'] for x in trail['blocklist']).items())))
    return "\n".join(lines)
