"""Typed dependencies of the routes: the running gateway, the caller, uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth.api_keys import allowed
from gateway.bootstrap import Gateway
from gateway.errors import (
    AuthError,
    ForbiddenError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from gateway.service import Caller, FaceService, Upload

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_service(gateway: GatewayDep) -> FaceService:
    return gateway.service


ServiceDep = Annotated[FaceService, Depends(get_service)]


def request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


def require(role: str) -> Callable[..., Caller]:
    """A dependency that authenticates the request and checks that its key may ``role``.

    Refusals are audited (action ``auth``, outcome ``refused``)."""

    def dependency(
        request: Request,
        gateway: GatewayDep,
        key: Annotated[str | None, Depends(_api_key)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Caller:
        rid = request_id(request)
        token = key or (bearer.credentials if bearer else None)
        try:
            principal = gateway.keys.authenticate(token)
        except AuthError:
            gateway.service.audit("auth", "refused", Caller(None, None, rid))
            raise
        caller = Caller(principal.key_id, principal.role, rid)
        if not allowed(principal.role, role):
            gateway.service.audit("auth", "refused", caller)
            raise ForbiddenError(f"a key with role {principal.role!r} may not {role}")
        if idempotency_key and request.method in ("POST", "PATCH", "DELETE"):
            gateway.service.db.idempotency.claim(f"{principal.key_id}:{idempotency_key}")
        return caller

    return dependency


AdminCaller = Annotated[Caller, Depends(require("admin"))]
EnrolCaller = Annotated[Caller, Depends(require("enrol"))]
VerifyCaller = Annotated[Caller, Depends(require("verify"))]
IdentifyCaller = Annotated[Caller, Depends(require("identify"))]


def multipart_only(request: Request) -> None:
    """Routes taking files answer 415 to any other body type."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            "send images as multipart/form-data uploads", content_type=content_type or None
        )


Multipart = Depends(multipart_only)


def read_upload(file: UploadFile, limit: int) -> Upload:
    """The bytes of one uploaded file, refused when over ``limit``."""
    data = file.file.read(limit + 1)
    name = file.filename or "upload"
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"{name} is larger than {limit} bytes", code="file_too_large", image=name
        )
    return Upload(name, data)
