"""What each route needs before its body is read: the role of the key it requires, and how
many body bytes it may receive.

Policies are derived from the routes themselves (the ``require(role)`` dependency each
protected route declares, and its file parameters), so a new route gets one without a
table to keep in step. A route can name its body kind explicitly with
``openapi_extra={"x-body": "archive"}``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from gateway.settings import Settings

FORM_OVERHEAD = 64 * 1024  # multipart headers and form fields beside the files
ROLE_ATTRIBUTE = "required_role"  # set by gateway.api.deps.require on its dependency

BodyKind = Literal["json", "image", "images", "archive"]


@dataclass(frozen=True)
class RoutePolicy:
    """``role``: the role a key needs (None: public). ``limit``: body bytes allowed."""

    role: str | None
    kind: BodyKind
    limit: int
    files: int = 0  # file parameters of a single-file route


def _role(dependant: Dependant) -> str | None:
    for dep in dependant.dependencies:
        role = getattr(dep.call, ROLE_ATTRIBUTE, None)
        if isinstance(role, str):
            return role
        found = _role(dep)
        if found is not None:
            return found
    return None


def _kind(route: APIRoute | APIWebSocketRoute) -> tuple[BodyKind, int]:
    """The body kind of a route and, for single-file routes, how many files it takes."""
    declared = (getattr(route, "openapi_extra", None) or {}).get("x-body")
    single, many = 0, False
    for field in route.dependant.body_params:
        if not isinstance(field.field_info, params.File):
            continue
        if typing.get_origin(field.field_info.annotation) is list:
            many = True
        else:
            single += 1
    if declared in ("json", "image", "images", "archive"):
        return declared, single
    if many:
        return "images", single
    if single:
        return "image", single
    return "json", 0


def policy_for(route: APIRoute | APIWebSocketRoute, settings: Settings) -> RoutePolicy:
    kind, files = _kind(route)
    limit = {
        "json": settings.max_json_bytes,
        "image": max(1, files) * settings.max_upload_bytes + FORM_OVERHEAD,
        "images": settings.max_request_bytes,
        "archive": settings.max_archive_bytes,
    }[kind]
    return RoutePolicy(_role(route.dependant), kind, limit, files)


class Policies:
    """The policy of the route a request is for (the JSON limit and no role when no route
    matches: the router then answers 404 or 405)."""

    def __init__(self, routes: Iterable[BaseRoute], settings: Settings) -> None:
        self.table = [
            (route, policy_for(route, settings))
            for route in routes
            if isinstance(route, APIRoute | APIWebSocketRoute)
        ]
        self.default = RoutePolicy(None, "json", settings.max_json_bytes)

    def match(self, scope: Scope) -> RoutePolicy:
        for route, policy in self.table:
            found, _ = route.matches(scope)
            if found is Match.FULL:
                return policy
        return self.default

    def largest(self) -> int:
        return max([p.limit for _, p in self.table] + [self.default.limit])


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_request_id(value: str) -> bool:
    """An ``X-Request-ID`` we accept and echo: 1-128 of ``A-Z a-z 0-9 . _ : -``."""
    return _REQUEST_ID.fullmatch(value) is not None
