"""Typed dependencies of the routes: the services, the settings, the caller, uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.bootstrap import Gateway
from gateway.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from gateway.service.admin import AdminService
from gateway.service.faces import FaceService
from gateway.service.jobs import JobService
from gateway.service.types import Caller, Upload
from gateway.settings import Settings

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_service(gateway: GatewayDep) -> FaceService:
    return gateway.service


def get_admin(gateway: GatewayDep) -> AdminService:
    return gateway.admin


def get_jobs(gateway: GatewayDep) -> JobService:
    return gateway.jobs


def get_gateway_settings(gateway: GatewayDep) -> Settings:
    return gateway.settings


ServiceDep = Annotated[FaceService, Depends(get_service)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_gateway_settings)]


def request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


def require(role: str) -> Callable[..., Caller]:
    """A dependency that authenticates the request and checks that its key may ``role``.

    Refusals are audited (action ``auth``, outcome ``refused``)."""

    def dependency(
        request: Request,
        admin: AdminDep,
        key: Annotated[str | None, Depends(_api_key)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Caller:
        token = key or (bearer.credentials if bearer else None)
        caller = admin.authorize(token, role, request_id(request))
        if idempotency_key and request.method in ("POST", "PATCH", "DELETE"):
            admin.claim_request(caller, idempotency_key)
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
