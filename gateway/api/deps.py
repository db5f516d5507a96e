"""Typed dependencies of the routes: the services, the settings, the caller, uploads.

Dependencies are ``async def`` unless they block: FastAPI runs a plain ``def`` dependency
in the thread pool, one hand-off (and wake-up) per dependency per request, which cost more
CPU than the attribute lookups most of these are."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gateway.api import idempotency
from gateway.api.policy import ROLE_ATTRIBUTE
from gateway.bootstrap import Gateway
from gateway.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from gateway.service.admin import AdminService
from gateway.service.detection import DetectionService
from gateway.service.enrolment import EnrolmentService
from gateway.service.health import HealthService
from gateway.service.identification import IdentificationService
from gateway.service.jobs import JobService
from gateway.service.subjects import SubjectService
from gateway.service.types import Caller, StoredResponse, Upload
from gateway.service.verification import VerificationService
from gateway.settings import Settings

NAMESPACE_PATTERN = "^[A-Za-z0-9_-]{1,64}$"  # namespaces and galleries
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_subjects(gateway: GatewayDep) -> SubjectService:
    return gateway.subjects


async def get_enrolment(gateway: GatewayDep) -> EnrolmentService:
    return gateway.enrolment


async def get_verification(gateway: GatewayDep) -> VerificationService:
    return gateway.verification


async def get_identification(gateway: GatewayDep) -> IdentificationService:
    return gateway.identification


async def get_detection(gateway: GatewayDep) -> DetectionService:
    return gateway.detection


async def get_health(gateway: GatewayDep) -> HealthService:
    return gateway.health


async def get_admin(gateway: GatewayDep) -> AdminService:
    return gateway.admin


async def get_jobs(gateway: GatewayDep) -> JobService:
    return gateway.jobs


async def get_gateway_settings(gateway: GatewayDep) -> Settings:
    return gateway.settings


SubjectsDep = Annotated[SubjectService, Depends(get_subjects)]
EnrolmentDep = Annotated[EnrolmentService, Depends(get_enrolment)]
VerificationDep = Annotated[VerificationService, Depends(get_verification)]
IdentificationDep = Annotated[IdentificationService, Depends(get_identification)]
DetectionDep = Annotated[DetectionService, Depends(get_detection)]
HealthDep = Annotated[HealthService, Depends(get_health)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_gateway_settings)]


def require(role: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency that authenticates the request and checks that its key may ``role``.

    The edge middleware (:mod:`gateway.api.edge`) has already done so from the headers,
    before the body was read, and left the caller in ``request.state``; the check here
    stands for an app run without it. Refusals are audited (action ``auth``)."""

    async def dependency(
        request: Request,
        admin: AdminDep,
        key: Annotated[str | None, Depends(_api_key)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
        x_namespace: Annotated[
            str | None,
            Header(
                pattern=NAMESPACE_PATTERN,
                description="the namespace (tenant) to act in: any for an admin key, "
                "only its own for the others (default: the key's own)",
            ),
        ] = None,
    ) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:
            token = key or (bearer.credentials if bearer else None)
            caller = await run_in_threadpool(admin.authorize, token, role, request.state.request_id)
        return caller if x_namespace is None else admin.in_namespace(caller, x_namespace)

    setattr(dependency, ROLE_ATTRIBUTE, role)  # read by gateway.api.policy
    return dependency


def changes(role: str) -> Callable[..., Awaitable[Caller]]:
    """:func:`require` for a route that changes something: it also honours an
    ``Idempotency-Key`` (:mod:`gateway.api.idempotency`)."""
    authorized = Depends(require(role))  # a default, not an annotation: those cannot
    # name a local (annotations are strings here, resolved in the module's namespace)

    async def dependency(
        request: Request,
        admin: AdminDep,
        caller: Caller = authorized,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=128,
                description="repeat a request safely: the same key and request get the "
                "first response back",
            ),
        ] = None,
    ) -> Caller:
        if idempotency_key is not None:
            digest = await idempotency.fingerprint(request, caller)
            outcome = await run_in_threadpool(admin.begin_request, caller, idempotency_key, digest)
            if isinstance(outcome, StoredResponse):
                raise idempotency.Replay(outcome)
            setattr(request.state, idempotency.STATE, outcome)
        return caller

    setattr(dependency, ROLE_ATTRIBUTE, role)  # read by gateway.api.policy
    return dependency


AdminCaller = Annotated[Caller, Depends(require("admin"))]
EnrolCaller = Annotated[Caller, Depends(require("enrol"))]
VerifyCaller = Annotated[Caller, Depends(require("verify"))]
IdentifyCaller = Annotated[Caller, Depends(require("identify"))]
AdminChange = Annotated[Caller, Depends(changes("admin"))]
EnrolChange = Annotated[Caller, Depends(changes("enrol"))]
IdentifyChange = Annotated[Caller, Depends(changes("identify"))]


async def multipart_only(request: Request) -> None:
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
