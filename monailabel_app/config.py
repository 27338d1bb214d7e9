"""Typed configuration of the ProQual MONAI Label app.

MONAI Label hands the app its ``--conf key value`` pairs as a dict of strings. :func:`parse_conf`
turns them into a :class:`ProQualConfig`, checked at start: an unknown key or a bad value stops the
server with a message that names the key, the value and what is allowed.

=====================  ===========================  ===============================================
key                    default                      meaning
=====================  ===========================  ===============================================
models                 quality,pirads,isup          comma list of the models to serve
device                 auto                         cpu, cuda or auto (cuda when available)
quality_checkpoint     model/quality.pt             weights of the quality model
pirads_checkpoint      model/pirads.pt              weights of the PI-RADS classifier
isup_checkpoint        model/isup.pt                weights of the ISUP classifier
profound_checkpoint    (none)                       official ProFound checkpoint (finetuning start)
hq_threshold           0.8                          quality score at or above which a study is HQ
target_hq_fraction     0.5                          wanted HQ fraction of the finetune set
pirads_scheme          pirads_ge4                   pirads_ge4 | pirads_ge3 | pirads_4class | pirads_5class
cache_size             4                            studies kept preprocessed in memory
store                  <studies>/labels             folder of labels, annotations and image info
=====================  ===========================  ===============================================

Relative checkpoint paths are taken from the current directory; the defaults live in the repository's
``model/`` folder (next to ``monailabel_app/``). Values given on the command line are strings and are
converted here (``"0.7"`` -> 0.7, ``"quality,isup"`` -> ["quality", "isup"]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from proqual.errors import ValidationError
from proqual.labels import DEFAULT_SCHEMES, SCHEMES
from proqual.stratify import DEFAULT_HQ_THRESHOLD
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

#: the models the app knows, in serving order
MODEL_NAMES: tuple[str, ...] = ("quality", "pirads", "isup")
#: PI-RADS label schemes of :mod:`proqual.labels`: binary >= 4 (default), binary >= 3, {<=2, 3, 4, 5}, 1..5
PIRADS_SCHEMES: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.task == "pirads")
#: the repository's model folder (default checkpoints)
MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


class ProQualConfig(BaseModel):
    """The app's settings; build it with :func:`parse_conf` from MONAI Label's ``conf`` dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[Literal["quality", "pirads", "isup"], ...] = MODEL_NAMES
    device: Literal["cpu", "cuda", "auto"] = "auto"
    quality_checkpoint: Path = MODEL_DIR / "quality.pt"
    pirads_checkpoint: Path = MODEL_DIR / "pirads.pt"
    isup_checkpoint: Path = MODEL_DIR / "isup.pt"
    profound_checkpoint: Path | None = None
    hq_threshold: float = Field(DEFAULT_HQ_THRESHOLD, ge=0.0, le=1.0)
    target_hq_fraction: float = Field(0.5, ge=0.0, le=1.0)
    pirads_scheme: str = DEFAULT_SCHEMES["pirads"]
    cache_size: int = Field(4, ge=0, le=1024)
    store: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip().lower() for p in v.split(",") if p.strip()]
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError(f"name at least one model ({', '.join(MODEL_NAMES)})")
            if len(set(v)) != len(v):
                raise ValueError(f"a model is named twice in {','.join(map(str, v))}")
        return v

    @field_validator("device", "pirads_scheme", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("pirads_scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        name = v if v.startswith("pirads_") else f"pirads_{v}"  # "ge4" is short for "pirads_ge4"
        if name not in PIRADS_SCHEMES:
            raise ValueError(f"unknown PI-RADS scheme {v!r}")
        return name

    @field_validator("profound_checkpoint", "store", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator(
        "quality_checkpoint", "pirads_checkpoint", "isup_checkpoint", "profound_checkpoint", "store"
    )
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser().resolve()

    @field_validator("profound_checkpoint")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file {v} not found")
        return v

    def checkpoint(self, model: str) -> Path:
        """The checkpoint path configured for ``model``."""
        return getattr(self, f"{model}_checkpoint")

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda`` (``auto`` -> ``cuda`` when torch sees a GPU); ``cuda`` without a GPU is an
        error naming the key."""
        if self.device == "cpu":
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if self.device == "cuda":
            raise ValidationError("device", "--conf device 'cuda': torch sees no CUDA GPU (use cpu or auto)")
        return "cpu"


#: conf keys MONAI Label itself puts into the conf dict (not ours to validate)
RESERVED_KEYS: frozenset[str] = frozenset({"server_mode"})


def valid_keys() -> list[str]:
    return list(ProQualConfig.model_fields)


def parse_conf(conf: dict[str, Any] | None) -> ProQualConfig:
    """Validate MONAI Label's ``conf`` (``--conf k v`` pairs, all strings) into a :class:`ProQualConfig`.

    Raises :class:`proqual.errors.ValidationError` whose ``field`` is the offending key and whose
    message says what was given and what is allowed.
    """
    conf = {str(k): v for k, v in (conf or {}).items() if str(k) not in RESERVED_KEYS}
    unknown = sorted(k for k in conf if k not in ProQualConfig.model_fields)
    if unknown:
        raise ValidationError(
            unknown[0],
            f"unknown --conf key {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid_keys())}",
        )
    try:
        return ProQualConfig(**conf)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err.get("loc") else "conf"
        given = conf.get(key)
        raise ValidationError(
            key, f"--conf {key} {given!r}: {_explain(key, err.get('msg', 'invalid value'))}"
        ) from None


def _explain(key: str, msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    if key == "models":
        return f"{msg} (allowed: comma list of {', '.join(MODEL_NAMES)})"
    if key == "pirads_scheme":
        return f"{msg} (allowed: {', '.join(PIRADS_SCHEMES)})"
    return msg
