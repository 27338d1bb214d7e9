"""HTTP wiring of the ProQual app into MONAI Label's FastAPI server.

MONAI Label builds its FastAPI ``app`` (``monailabel.app``) before it loads our app, and creates our app
instance inside the server's start-up (lifespan), where it calls ``instance.server_mode(True)``. The
ProQual app calls :func:`install` from there, which

- adds the ``/proqual/...`` routes (:data:`router`);
- adds exception handlers so that a client's mistake is a JSON 4xx naming the problem, never a bare
  500: unknown image/model/strategy/trainer/scoring method -> 404; invalid annotation or option (a
  :class:`proqual.errors.ValidationError`) -> 422 with ``field``; unreadable image or a study missing a
  sequence -> 422; malformed JSON or a missing parameter -> 400; an unreachable PACS -> 502. Errors that
  MONAI transforms wrap are unwrapped (the ``__cause__`` chain is searched). Anything else is a logged
  500 with a JSON ``detail``;
- adds :class:`GuardMiddleware`, which answers 404 for an unknown model/strategy/trainer/scoring name
  before MONAI Label starts a job or reads the request body.

FastAPI assembles its middleware stack on the first ASGI call (the lifespan call itself), so
:func:`install` clears ``middleware_stack``; FastAPI rebuilds it, with our handlers, on the next request.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from monailabel.interfaces.utils.app import app_instance
from proqual.errors import CheckpointError, InputError, MissingSequenceError, ProQualError, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from monailabel_app.errors import AppError, BadRequestError, NotFoundError

log = logging.getLogger(__name__)

#: stock MONAI Label 0.8.5 answers these client mistakes with status 500; we answer 400
_STOCK_CLIENT_MISTAKES = {
    "Neither Image nor File not Session ID input is provided": "give image=<id> (or a file, or a session_id)",
    "DICOM SEG format is not supported in a non-DICOM datastore": "output=dicom_seg needs a DICOMweb datastore",
}

router = APIRouter(prefix="/proqual", tags=["ProQual"])
_user = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))


def _instance():
    return app_instance()


@router.get("/studies", summary="Studies: anchor id, sequence ids, missing sequences, labeled")
async def api_studies(user: User = _user) -> list[dict[str, Any]]:
    return _instance().datastore().studies_summary()


@router.get("/annotations/{image}", summary="Annotation history of a study (any of its image ids)")
async def api_annotations(image: str, user: User = _user) -> dict[str, Any]:
    ds = _instance().datastore()
    entry = ds.entry(image)
    summary = ds.annotation_summary(image)
    out = summary.model_dump(mode="json")
    out.update(study_id=entry.study_id, labeled=bool(summary.revisions), sequences=ds.sequence_ids(image))
    return out


@router.get("/finetune-set", summary="Finetune set: counts per class and quality stratum, HQ fraction")
async def api_finetune_set(user: User = _user) -> dict[str, Any]:
    return _instance().finetune_set_summary()


# ------------------------------------------------------------------------------------------------ errors
def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=status, content=json.loads(json.dumps(body, default=str)))


def error_response(exc: BaseException) -> JSONResponse | None:
    """The JSON answer for a known error type, or None."""
    if isinstance(exc, AppError):
        return _json(exc.status, exc.body())
    if isinstance(exc, MissingSequenceError):
        return _json(422, {"detail": str(exc), "study_id": exc.study_id, "missing": exc.missing})
    if isinstance(exc, ValidationError):
        return _json(422, {"detail": str(exc), "field": exc.field, "problem": exc.problem})
    if isinstance(exc, InputError):
        return _json(422, {"detail": str(exc), "source": exc.source, "problem": exc.problem})
    if isinstance(exc, CheckpointError):
        return _json(503, {"detail": f"model unavailable: {exc}"})
    if isinstance(exc, ProQualError):
        return _json(422, {"detail": str(exc)})
    if isinstance(exc, json.JSONDecodeError):
        return _json(400, {"detail": f"malformed JSON in the request: {exc}"})
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        return _json(404, {"detail": getattr(exc, "msg", str(exc))})
    if isinstance(exc, MONAILabelException):
        status = 400 if exc.error == MONAILabelError.INVALID_INPUT else 500
        return _json(status, {"detail": exc.msg, "error": exc.error.value})
    return None


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


async def _known_error_handler(request: Request, exc: Exception) -> JSONResponse:
    for e in _causes(exc):
        resp = error_response(e)
        if resp is not None:
            if resp.status_code >= 500:
                log.error("%s %s -> %s: %s", request.method, request.url.path, resp.status_code, e)
            return resp
    return await _server_error_handler(request, exc)


async def _server_error_handler(request: Request, exc: Exception) -> JSONResponse:
    for e in _causes(exc):  # e.g. a ProQualError wrapped by a MONAI transform
        resp = error_response(e)
        if resp is not None:
            return resp
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, {"detail": f"internal server error: {type(exc).__name__}: {exc}"})


async def _http_error_handler(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 500 and exc.detail in _STOCK_CLIENT_MISTAKES:
        return _json(400, {"detail": f"{exc.detail}: {_STOCK_CLIENT_MISTAKES[exc.detail]}"})
    return await http_exception_handler(request, exc)


# ------------------------------------------------------------------------------------------------ guard
#: path prefix -> kind of name that follows it
_GUARDED: dict[tuple[str, ...], str] = {
    ("infer",): "model",
    ("batch", "infer"): "model",
    ("train",): "trainer",
    ("activelearning",): "strategy",
    ("scoring",): "scoring method",
}


class GuardMiddleware:
    """Answers 404 for POSTs naming an unknown model/strategy/trainer/scoring method, and 400 for an
    inference request with no image, before MONAI Label starts work or parses the body."""

    def __init__(self, app, prefix: str = ""):
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST":
            err = self._check(scope)
            if err is not None:
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope) -> AppError | None:
        path: str = scope.get("path", "")
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :]
        parts = [p for p in path.split("/") if p]
        for head, kind in _GUARDED.items():
            if len(parts) == len(head) + 1 and tuple(parts[: len(head)]) == head:
                name = parts[-1]
                try:
                    instance = _instance()
                    instance.require(kind, name)
                except NotFoundError as exc:
                    return exc
                except Exception:  # the app itself failed: let the route report it
                    return None
                if head == ("infer",):
                    return _check_infer_input(scope)
        return None


def _check_infer_input(scope) -> AppError | None:
    from urllib.parse import parse_qs

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("image", [""])[0] or query.get("session_id", [""])[0]:
        return None
    headers = dict(scope.get("headers") or [])
    ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
    if ctype.startswith("multipart/form-data"):
        return None  # may carry a file; MONAI Label checks it
    return BadRequestError("inference needs image=<image id> (or a file upload, or a session_id)")


# ------------------------------------------------------------------------------------------------ install
def install(fastapi_app=None) -> bool:
    """Add ProQual's routes, error handlers and guard to MONAI Label's FastAPI app (once).

    Returns False when there is no server app (the app runs in a training/scoring subprocess).
    """
    if fastapi_app is None:
        import sys

        module = sys.modules.get("monailabel.app")
        if module is None:
            return False
        fastapi_app = module.app
    if getattr(fastapi_app.state, "proqual_installed", False):
        return True
    prefix = settings.MONAI_LABEL_API_STR
    fastapi_app.include_router(router, prefix=prefix)
    fastapi_app.middleware_stack = None  # rebuilt by FastAPI on the next request, with what follows
    fastapi_app.add_middleware(GuardMiddleware, prefix=prefix)
    for exc_class in (ProQualError, MONAILabelException, json.JSONDecodeError):
        fastapi_app.add_exception_handler(exc_class, _known_error_handler)
    fastapi_app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    fastapi_app.add_exception_handler(Exception, _server_error_handler)
    fastapi_app.state.proqual_installed = True
    log.info("ProQual routes and error handlers installed (%s/proqual/...)", prefix)
    return True
