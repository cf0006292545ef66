"""``/dicomweb/``: the public DICOMweb service (PS3.18), decided here and served by catalog and ingest.

Each request is classified (:func:`classify`) into the policy action it performs, the study it is about and
the service that serves it; the :class:`~emage_access.decisions.AccessDecider` decides and audits; only an
allowed request is forwarded, streamed both ways. Searches (QIDO-RS) are forwarded with the caller's search
scope, which the catalog applies inside its query, so counts and pages hold only permitted studies, and a
study the caller may not see is as absent from a search as an unknown one.

Action of each resource (PS3.18 §10.4 to §10.6):

============================================================  ===============  ========
resource                                                      action           service
============================================================  ===============  ========
``GET /studies``, ``/series``, ``/instances`` (and those
under a study or series)                                      search           catalog
``GET …/metadata``                                            read_metadata    catalog
``GET /studies/{study}`` (the whole study)                    download         ingest
``GET …/series/{series}``, ``…/instances/{instance}``,
``…/frames/{frames}``, ``…/bulk/{tag}``                       retrieve         ingest
``GET …/rendered``, ``…/thumbnail``                           rendered         ingest
``POST /studies``, ``POST /studies/{study}``                  store            ingest
============================================================  ===============  ========
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Final

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import propagate
from starlette.background import BackgroundTask

from emage_access.auth import Caller, current_caller
from emage_access.decisions import AccessDecider, get_decider, not_found
from emage_access.domain.links import LinkSession
from emage_access.domain.policy import Action
from emage_common.access_contract import FACILITY_HEADER, MAX_SCOPE_HEADER_BYTES, SEARCH_SCOPE_HEADER

_log = logging.getLogger(__name__)

PREFIX: Final = "/dicomweb"


class Upstream(Enum):
    CATALOG = "catalog"
    INGEST = "ingest"


@dataclass(frozen=True, slots=True)
class Target:
    """What a DICOMweb request does, to which study, and who serves it."""

    action: Action
    study_instance_uid: str | None
    upstream: Upstream


_SEARCH_LEAVES: Final = frozenset({"studies", "series", "instances"})


def classify(method: str, path: str) -> Target | None:
    """The :class:`Target` of a request on ``path`` (relative to ``/dicomweb``), None for no resource."""
    parts = path.strip("/").split("/") if path.strip("/") else []
    if any(part == "" for part in parts):
        return None
    if method == "POST":
        if parts == ["studies"]:
            return Target(Action.STORE, None, Upstream.INGEST)
        if len(parts) == 2 and parts[0] == "studies":
            return Target(Action.STORE, parts[1], Upstream.INGEST)
        return None
    if method not in ("GET", "HEAD"):
        return None
    if len(parts) == 1 and parts[0] in _SEARCH_LEAVES:
        return Target(Action.SEARCH, None, Upstream.CATALOG)
    if len(parts) < 2 or parts[0] != "studies":
        return None
    study = parts[1]
    rest = parts[2:]
    # Walk the hierarchy studies/{s}[/series/{se}[/instances/{i}[/frames/{f}]]], then an optional leaf.
    depth = 0  # 0: the study, 1: a series, 2: an instance, 3: frames
    for level_name in ("series", "instances", "frames"):
        if len(rest) >= 2 * depth + 2 and rest[2 * depth] == level_name:
            depth += 1
        else:
            break
    leaf = rest[2 * depth :]
    if not leaf:
        return Target(Action.DOWNLOAD if depth == 0 else Action.RETRIEVE, study, Upstream.INGEST)
    if len(leaf) == 1:
        name = leaf[0]
        if (name == "series" and depth == 0) or (name == "instances" and depth <= 1):
            return Target(Action.SEARCH, study, Upstream.CATALOG)
        if name == "metadata" and depth <= 2:
            return Target(Action.READ_METADATA, study, Upstream.CATALOG)
        if name in ("rendered", "thumbnail"):
            return Target(Action.RENDERED, study, Upstream.INGEST)
        return None
    if len(leaf) == 2 and leaf[0] == "bulk" and depth == 2:
        return Target(Action.RETRIEVE, study, Upstream.INGEST)
    return None


# Request headers a client may pass to the services behind; everything else (cookies, authorization,
# forged X-Emage-* or X-Forwarded-* values) stays at the gateway.
_FORWARDED_REQUEST_HEADERS: Final = ("accept", "accept-charset", "content-type", "content-length")
# RFC 9110 §7.6.1 hop-by-hop headers, and those the gateway's server sets itself.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "date",
        "server",
        "x-request-id",
    }
)

router = APIRouter(prefix=PREFIX, tags=["DICOMweb"])


def route_each_method(
    target: APIRouter, path: str, methods: list[str], **options: Any
) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
    """Register an endpoint for each method as its own operation (one OpenAPI operation id per method)."""

    def register(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        for method in methods:
            target.add_api_route(
                path,
                endpoint,
                methods=[method],
                operation_id=f"{endpoint.__name__}_{method.lower()}",
                **options,
            )
        return endpoint

    return register


_DESCRIPTION: Final = (
    "DICOMweb (PS3.18): QIDO-RS, WADO-RS (metadata, instances, frames, bulk data, rendered, thumbnails) and "
    "STOW-RS. Every request is decided by the access policy and audited; a study the caller may not reach "
    "answers 404 like an unknown one, and searches only ever return permitted studies "
    "(total in `X-Total-Count`)."
)


@route_each_method(
    router,
    "/{path:path}",
    ["GET", "HEAD", "POST"],
    summary="DICOMweb resources (PS3.18), decided and audited",
    description=_DESCRIPTION,
    responses={
        401: {"description": "No valid access token."},
        403: {"description": "The caller's role may not do this at all."},
        404: {"description": "Unknown, or not permitted to this caller."},
    },
)
async def dicomweb(
    path: str,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
    decider: Annotated[AccessDecider, Depends(get_decider)],
) -> Response:
    target = classify(request.method, path)
    if target is None:
        raise HTTPException(404, "No such DICOMweb resource.")
    headers = _upstream_headers(request)
    if target.action is Action.SEARCH:
        decided, scope = await decider.search(caller, target.study_instance_uid, request=request)
        if decided.allowed or target.study_instance_uid is not None:
            # A denied search on one study is forwarded too: the scope hides the study, so the answer is
            # the same empty result an unknown study gets.
            encoded = scope.encode()
            if len(encoded) > MAX_SCOPE_HEADER_BYTES:
                raise HTTPException(
                    422,
                    "Your access covers too many separate grants to search them at once; search by study.",
                )
            headers[SEARCH_SCOPE_HEADER] = encoded
        else:
            raise HTTPException(403, "Your role may not do this.")
    else:
        decided = await decider.decide(
            caller,
            target.action,
            target.study_instance_uid,
            request=request,
            new_study_allowed=target.action is Action.STORE,
        )
        if not decided.allowed:
            if target.study_instance_uid is None:
                raise HTTPException(403, "Your role may not do this.")
            raise not_found()
    if target.action is Action.STORE and not isinstance(caller, LinkSession) and caller.facility_finess:
        headers[FACILITY_HEADER] = caller.facility_finess
    clients: dict[Upstream, httpx.AsyncClient] = request.app.state.upstreams
    return await forward(clients[target.upstream], request, path, headers)


def _upstream_headers(request: Request) -> dict[str, str]:
    headers = {name: request.headers[name] for name in _FORWARDED_REQUEST_HEADERS if name in request.headers}
    headers["X-Forwarded-Proto"] = request.url.scheme
    headers["X-Forwarded-Host"] = request.headers.get("host", request.url.netloc)
    headers["X-Forwarded-Prefix"] = PREFIX
    request_id = getattr(request.state, "request_id", None)
    if isinstance(request_id, str):
        headers["X-Request-Id"] = request_id
    propagate.inject(headers)
    return headers


async def forward(
    client: httpx.AsyncClient, request: Request, path: str, headers: dict[str, str]
) -> Response:
    """Send the request to ``path`` of ``client``'s service with ``headers``; stream the answer back."""
    url = httpx.URL(path="/" + path.strip("/"), query=request.url.query.encode("ascii"))
    upstream_request = client.build_request(
        request.method,
        url,
        headers=headers,
        content=request.stream() if request.method in ("POST", "PUT", "PATCH") else None,
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as error:
        _log.error("upstream %s unreachable: %s", client.base_url, error)
        raise HTTPException(503, "The service is temporarily unavailable; try again shortly.") from error
    response = StreamingResponse(
        upstream.aiter_raw(), status_code=upstream.status_code, background=BackgroundTask(upstream.aclose)
    )
    del response.headers["content-type"]
    for name, value in upstream.headers.multi_items():
        if name not in _DROPPED_RESPONSE_HEADERS:
            response.headers.append(name, value)
    return response
