"""Errors the app raises for a client's mistakes, and their HTTP status codes.

The app and its datastore raise these (or :mod:`proqual.errors`); :mod:`monailabel_app.server`
turns every one of them into a JSON answer ``{"detail": ..., ...}`` with the right 4xx status, so a
client's mistake never becomes a bare 500 and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterable

from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from proqual.errors import ProQualError


class AppError(ProQualError):
    """Base class of the app's client-facing errors; ``status`` is the HTTP status code."""

    status: int = 400

    def __init__(self, message: str, **extra):
        self.message = message
        self.extra = extra
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"detail": self.message, **self.extra}


class NotFoundError(AppError):
    """A named thing (image, study, model, strategy, trainer, scoring method, label) does not exist."""

    status = 404

    def __init__(self, kind: str, name: str, available: Iterable[str] | None = None, why: str | None = None):
        self.kind = kind
        self.name = name
        avail = sorted(available) if available is not None else None
        msg = f"unknown {kind} {name!r}"
        if why:
            msg = f"{kind} {name!r} is not available: {why}"
        elif avail is not None:
            msg += f"; available: {', '.join(avail) if avail else 'none'}"
        extra = {"kind": kind, "name": name}
        if avail is not None:
            extra["available"] = avail
        super().__init__(msg, **extra)


class ImageNotFound(NotFoundError, ImageNotFoundException):
    """Unknown image id. Also a MONAI Label ``ImageNotFoundException`` for code that catches those."""

    def __init__(self, image_id: str, why: str | None = None):
        NotFoundError.__init__(self, "image", image_id, why=why)


class LabelNotFound(NotFoundError, LabelNotFoundException):
    def __init__(self, label_id: str, tag: str):
        NotFoundError.__init__(self, "label", f"{label_id} ({tag})")


class NotSupportedError(AppError):
    """An operation MONAI Label offers that this datastore does not (e.g. uploading single images)."""

    status = 405


class BadRequestError(AppError):
    """A malformed request (missing parameter, bad JSON)."""

    status = 400


class UpstreamError(AppError):
    """A server the app depends on (DICOMweb/PACS) failed or is unreachable."""

    status = 502


class ModelUnavailableError(AppError):
    """A configured model whose checkpoint file does not exist (yet): nothing to run it with.

    Its inference task stays registered and loads the checkpoint on the first request after the file
    appears, so this is temporary (HTTP 503, not 404).
    """

    status = 503

    def __init__(self, model: str, checkpoint, why: str | None = None):
        self.model = model
        self.checkpoint = str(checkpoint)
        why = why or f"checkpoint {self.checkpoint} not found"
        super().__init__(
            f"model {model!r} is not available: {why}; it is served as soon as that file exists "
            "(copy a checkpoint there or train the model: POST /train/" + model + ")",
            kind="model",
            name=model,
            checkpoint=self.checkpoint,
            available=False,
        )
