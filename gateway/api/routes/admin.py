"""Administration: the audit log, API keys and the stored templates' models (role ``admin``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway.api.deps import AdminCaller, AdminChange, AdminDep, HealthDep
from gateway.api.schemas import ApiKeyIn, ApiKeyOut, AuditEventOut, AuditPage, ModelsOut
from gateway.service.types import ApiKeyInfo

router = APIRouter(prefix="/v1", tags=["admin"])


def _key_out(k: ApiKeyInfo, token: str | None = None) -> ApiKeyOut:
    return ApiKeyOut(
        id=k.id,
        role=k.role,
        label=k.label,
        namespace=k.namespace,
        gallery=k.gallery,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
        token=token,
    )


@router.get("/audit", response_model=AuditPage)
def audit(
    admin: AdminDep,
    caller: AdminCaller,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="events after this sequence number")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last: Annotated[
        int | None, Query(ge=1, le=1000, description="only the newest events, this many")
    ] = None,
) -> AuditPage:
    """Audit events, oldest first; never images or embeddings."""
    page = admin.audit_page(after, limit, last)
    return AuditPage(
        events=[AuditEventOut(**e.__dict__) for e in page.events], next_after=page.next_after
    )


@router.get("/keys", response_model=list[ApiKeyOut])
def list_keys(admin: AdminDep, caller: AdminCaller) -> list[ApiKeyOut]:
    return [_key_out(k) for k in admin.list_keys()]


@router.post("/keys", status_code=201, response_model=ApiKeyOut)
def create_key(body: ApiKeyIn, admin: AdminDep, caller: AdminChange) -> ApiKeyOut:
    """A new API key; its token is shown in this response only."""
    new = admin.create_key(body.role, body.label, caller, body.namespace, body.gallery)
    return _key_out(new.record, new.token)


@router.delete("/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, admin: AdminDep, caller: AdminChange) -> Response:
    admin.revoke_key(key_id, caller)
    return Response(status_code=204)


@router.get("/models", response_model=ModelsOut)
def models(health: HealthDep, caller: AdminCaller) -> ModelsOut:
    """The running model's identity and how many stored templates are of it and of other
    models, which no search compares (``facerec reembed`` moves those with a kept image)."""
    return ModelsOut(**health.models())
