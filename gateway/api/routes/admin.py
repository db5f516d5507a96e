"""Administration: the audit log and API keys (role ``admin``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway.api.deps import AdminCaller, GatewayDep
from gateway.api.schemas import ApiKeyIn, ApiKeyOut, AuditEventOut, AuditPage

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/audit", response_model=AuditPage)
def audit(
    gateway: GatewayDep,
    caller: AdminCaller,
    after: Annotated[int, Query(ge=0, description="events after this sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last: Annotated[
        int | None, Query(ge=1, le=1000, description="only the newest events, this many")
    ] = None,
) -> AuditPage:
    """Audit events, oldest first; never images or embeddings."""
    if last is not None:
        after = max(after, gateway.service.audit_log.last_seq() - last)
    events = gateway.service.audit_log.events(after, limit)
    return AuditPage(
        events=[AuditEventOut(**e.__dict__) for e in events],
        next_after=events[-1].seq if len(events) == limit else None,
    )


@router.get("/keys", response_model=list[ApiKeyOut])
def list_keys(gateway: GatewayDep, caller: AdminCaller) -> list[ApiKeyOut]:
    return [
        ApiKeyOut(
            id=k.id,
            role=k.role,
            label=k.label,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
            token=None,
        )
        for k in gateway.keys.list()
    ]


@router.post("/keys", status_code=201, response_model=ApiKeyOut)
def create_key(body: ApiKeyIn, gateway: GatewayDep, caller: AdminCaller) -> ApiKeyOut:
    """A new API key; its token is shown in this response only."""
    issued, record = gateway.keys.create(body.role, body.label)
    gateway.service.audit("key_create", "ok", caller)
    return ApiKeyOut(
        id=record.id,
        role=record.role,
        label=record.label,
        created_at=record.created_at,
        revoked_at=None,
        token=issued.token,
    )


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, gateway: GatewayDep, caller: AdminCaller) -> Response:
    gateway.keys.revoke(key_id)
    gateway.service.audit("key_revoke", "ok", caller)
    return Response(status_code=204)
