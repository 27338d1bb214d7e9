"""Data-parallel training on one machine: one process per rank, a ``torch.distributed`` process group
on a free loopback port, NCCL on CUDA (one GPU per rank) and gloo on CPU.

- :func:`run` starts ``world_size`` processes with ``torch.multiprocessing`` (spawn), initialises the
  process group in each and calls ``fn(rank, *args)`` there (``rank`` a :class:`Rank`); it returns what
  every rank returned, in rank order. ``fn`` must be importable by name (a module-level function).
- :func:`finetune_distributed` runs :func:`proqual.classify.finetune.finetune` that way
  (``FinetuneConfig(distributed=True)``: ``DistributedDataParallel``, each rank a disjoint shard of every
  epoch's stratified order) and loads rank 0's final weights into the caller's model. Progress rows of
  rank 0 are relayed to the caller's ``progress`` in this process, so it may be any callable. No rank
  writes a checkpoint: the caller saves the model it got back, once.

The CLI (``proqual finetune --world-size N``) and the MONAI Label trainers (request option
``multi_gpu``/``gpus``) call :func:`finetune_distributed`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import queue as queue_module
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from proqual.errors import ProQualError, ValidationError

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


class DistributedError(ProQualError):
    """A rank of a distributed run failed; the message names the rank and its error."""


@dataclass(frozen=True)
class Rank:
    """What a rank's function is told: its rank, the world size, backend and its device."""

    rank: int
    world_size: int
    backend: str
    device: str
    queue: Any = None

    def send(self, message: Any) -> None:
        """Hand ``message`` (picklable) to :func:`run`'s ``on_message`` in the launching process."""
        if self.queue is not None:
            self.queue.put((self.rank, message))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_backend(device: str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def rank_devices(world_size: int, device: str) -> list[str]:
    """One device per rank: ``cuda:0 .. cuda:N-1`` for a CUDA ``device``, else ``cpu`` for every rank."""
    if not str(device).startswith("cuda"):
        return ["cpu"] * world_size
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world_size > n:
        raise ValidationError(
            "world_size", f"{world_size} ranks on {device} need {world_size} GPUs, {n} visible"
        )
    return [f"cuda:{i}" for i in range(world_size)]


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 prefix of a model's parameters (names and exact bytes): equal iff the parameters are."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker(
    index: int,
    fn: Callable,
    world_size: int,
    backend: str,
    port: int,
    devices: list[str],
    out_dir: str,
    queue: Any,
    args: tuple,
    timeout_s: float,
) -> None:
    import torch.distributed as dist

    rank, device = index, devices[index]
    if Path("/sys/class/net/lo").exists():  # the group lives on loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    else:  # the ranks share the cores
        torch.set_num_threads(max(1, _cpu_count() // world_size))
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    path = Path(out_dir) / f"rank{rank}.pt"
    try:
        result = fn(Rank(rank, world_size, backend, device, queue), *args)
        torch.save({"ok": True, "result": result}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    except BaseException as exc:
        torch.save({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, path)
        raise
    finally:
        dist.destroy_process_group()


def _drain(q: Any, on_message: Callable[[int, Any], None] | None) -> None:
    if q is None:
        return
    while True:
        try:
            rank, message = q.get_nowait()
        except queue_module.Empty:
            return
        if on_message is not None:
            on_message(rank, message)


def run(
    fn: Callable,
    world_size: int,
    backend: str | None = None,
    *,
    args: tuple = (),
    devices: Sequence[str] | None = None,
    on_message: Callable[[int, Any], None] | None = None,
    timeout_s: float = 1800.0,
) -> list[Any]:
    """Run ``fn(rank, *args)`` on ``world_size`` spawned processes in one process group; the ranks'
    return values in rank order.

    ``backend``: ``gloo`` or ``nccl`` (default: ``nccl`` when ``devices`` are CUDA devices, else
    ``gloo``). ``devices``: one per rank (default ``cpu`` for every rank). ``on_message(rank, message)``
    gets, in this process, what a rank passes to :meth:`Rank.send`. ``timeout_s`` bounds the group's
    collectives. A failing rank stops the others and raises :class:`DistributedError` naming it.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValidationError("world_size", f"must be a positive integer, got {world_size!r}")
    devices = list(devices) if devices is not None else ["cpu"] * world_size
    if len(devices) != world_size:
        raise ValidationError("devices", f"{len(devices)} devices for {world_size} ranks")
    backend = backend or default_backend(devices[0])
    if backend not in BACKENDS:
        raise ValidationError("backend", f"{backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "nccl" and not all(d.startswith("cuda") for d in devices):
        raise ValidationError("backend", f"nccl needs a CUDA device per rank, got {devices}")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        raise ValidationError("world_size", "this torch build has no torch.distributed")
    out_dir = tempfile.mkdtemp(prefix="proqual-ddp-")
    q = mp.get_context("spawn").Queue()
    port = free_port()
    log.info("distributed run: %d ranks, %s, port %d, devices %s", world_size, backend, port, devices)
    try:
        ctx = mp.start_processes(
            _worker,
            args=(fn, world_size, backend, port, devices, out_dir, q, tuple(args), timeout_s),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        try:
            while not ctx.join(timeout=0.2):
                _drain(q, on_message)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise DistributedError(_failure(out_dir, world_size, exc)) from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
        _drain(q, on_message)
        results = []
        for rank in range(world_size):
            blob = torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False)
            results.append(blob["result"])
        return results
    finally:
        q.close()
        shutil.rmtree(out_dir, ignore_errors=True)


def _failure(out_dir: str, world_size: int, exc: Exception) -> str:
    """The first rank's own error message (saved by the rank), else what the process ended with."""
    for rank in range(world_size):
        path = Path(out_dir) / f"rank{rank}.pt"
        if path.is_file():
            try:
                blob = torch.load(path, weights_only=False)
            except Exception:  # noqa: S112 - a half-written file: look at the next rank
                continue
            if not blob.get("ok", True):
                return f"distributed rank {rank} failed: {blob['error']}"
    rank = getattr(exc, "error_index", "?")
    text = str(exc).strip().splitlines()
    return f"distributed rank {rank} failed: {text[-1] if text else type(exc).__name__}"


def _finetune_rank(rank: Rank, model, train, scheme, cfg, val):
    from proqual.classify.finetune import finetune

    model = copy.deepcopy(model)  # the launcher's tensors arrive in shared memory: train a private copy
    cfg = dataclasses.replace(cfg, device=rank.device, distributed=True)
    res = finetune(
        model, train, scheme=scheme, cfg=cfg, val=val, progress=rank.send if rank.rank == 0 else None
    )
    if rank.rank == 0:
        return {"result": res, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return {"result": {"distributed": res["distributed"]}}


def finetune_distributed(
    model,
    train: Sequence,
    *,
    scheme,
    cfg,
    world_size: int,
    val: Sequence | None = None,
    backend: str | None = None,
    devices: Sequence[str] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """:func:`proqual.classify.finetune.finetune` on ``world_size`` data-parallel ranks.

    ``devices`` default: ``cuda:0 .. cuda:N-1`` when ``cfg.device`` is CUDA (backend NCCL), else N CPU
    processes (gloo). ``model`` gets rank 0's final weights (moved to ``cfg.device``); the result is rank
    0's, with ``distributed``: world size, backend, devices, each rank's digest, samples and ``seen``
    (training indices per epoch), and ``parameters_identical`` (the ranks' final parameters agree).
    ``world_size`` 1 is a plain :func:`finetune`.
    """
    from proqual.classify.finetune import finetune

    if world_size == 1:
        return finetune(model, train, scheme=scheme, cfg=cfg, val=val, progress=progress)
    if len(train) < 2 * world_size:  # checked here too, before any process starts
        raise ValidationError(
            "train",
            f"{world_size} ranks need at least {2 * world_size} studies (2 per rank), got {len(train)}",
        )
    devices = list(devices) if devices is not None else rank_devices(world_size, cfg.device)
    backend = backend or default_backend(devices[0])
    model.cpu()
    results = run(
        _finetune_rank,
        world_size,
        backend,
        args=(model, list(train), scheme, cfg, list(val) if val else None),
        devices=devices,
        on_message=(lambda _rank, row: progress(row)) if progress else None,
    )
    model.load_state_dict(results[0]["state_dict"])
    model.to(cfg.device)
    out = results[0]["result"]
    ranks = [r["result"]["distributed"] for r in results]
    out["distributed"] = {
        "world_size": world_size,
        "backend": backend,
        "devices": devices,
        "batch_size_per_rank": cfg.batch_size,
        "samples_per_rank": [r["samples"] for r in ranks],
        "parameters_identical": len({r["parameters_sha256"] for r in ranks}) == 1,
        "ranks": ranks,
    }
    return out
