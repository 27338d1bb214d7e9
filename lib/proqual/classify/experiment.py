"""The image-quality experiment grid (after "Impact of Clinical Image Quality on Efficient Foundation
Model Finetuning", arXiv 2508.11864), on the phantom cohort.

Design: the HQ fraction of the finetune set and of the test set vary independently (disjoint sets); a
pretrained initialisation (small ProFound-Conv, FCMAE-style masked reconstruction on HQ phantoms) is
compared with training from scratch; runs repeat over seeds and finetune-set sizes. HQ = phantoms as
generated; LQ = phantoms degraded by the artifact simulator (severity 0.5..1, see
:mod:`proqual.classify.data`).

Outputs in ``out_dir``: ``runs.csv`` (one row per run and test fraction, appended as runs finish, so an
interrupted grid resumes where it stopped), ``heatmap.png`` (finetune HQ fraction x test HQ fraction ->
AUROC, pretrained and scratch, largest N) and ``label_efficiency.png`` (AUROC against N).
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from proqual.classify.data import INPUTS, phantom_examples
from proqual.classify.finetune import FinetuneConfig, evaluate, finetune
from proqual.errors import ValidationError
from proqual.labels import get_scheme
from proqual.stratify import PoolItem, build_finetune_set

COLUMNS = (
    "n",
    "finetune_hq_fraction",
    "init",
    "seed",
    "test_hq_fraction",
    "auroc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "n_test",
    "finetune_hq_achieved",
    "epochs_run",
    "seconds",
)


@dataclass
class GridConfig:
    scheme: str = "pirads_ge4"
    sizes: tuple[int, ...] = (8, 16, 32)
    finetune_hq: tuple[float, ...] = (0.0, 0.5, 1.0)
    test_hq: tuple[float, ...] = (0.0, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    inits: tuple[str, ...] = ("pretrained", "scratch")
    pool_size: int = 64
    test_pool_size: int = 48
    n_test: int = 24
    pretrain_studies: int = 48
    pretrain_epochs: int = 8
    epochs: int = 30
    batch_size: int = 4
    lr: float = 2e-3
    cohort_seed: int = 2026
    preset: str = "small-cpu"
    inputs: str = "small"
    device: str = "cpu"
    #: real data instead of the phantom cohort: labeled PI-CAI/flat folders (see :func:`_real_pools`)
    data: tuple[str, ...] = ()
    #: fraction of the real studies held out as the test pool
    test_fraction: float = 0.4
    #: the "pretrained" initialisation: a checkpoint (official ProFound or ProQual layout); without it,
    #: FCMAE-style pretraining (on HQ phantoms, or on the real finetune pool's images)
    init_checkpoint: str | None = None
    quality_checkpoint: str | None = None
    hq_threshold: float | None = None
    extra: dict = field(default_factory=dict)


def _pool(examples) -> list[PoolItem]:
    return [PoolItem(e.study_id, e.label, e.stratum) for e in examples]


def _phantom_pools(cfg: GridConfig, scheme, inputs, out: Path, bar):
    """Finetune pool (even indices HQ, odd LQ: both strata hold every label of the phantom schedule)
    and a disjoint test pool of the same make-up."""
    pool_idx = list(range(cfg.pool_size))
    test_idx = list(range(100_000, 100_000 + cfg.test_pool_size))
    pool_ex = phantom_examples(
        pool_idx,
        seed=cfg.cohort_seed,
        lq={i for i in pool_idx if i % 2},
        scheme=scheme,
        inputs=inputs,
        cache_dir=out / "cache",
        progress=bar("finetune pool"),
    )
    test_ex = phantom_examples(
        test_idx,
        seed=cfg.cohort_seed,
        lq={i for i in test_idx if i % 2},
        scheme=scheme,
        inputs=inputs,
        cache_dir=out / "cache",
        progress=bar("test pool"),
    )
    return pool_ex, test_ex


def _real_pools(cfg: GridConfig, scheme, inputs, log, bar):
    """Labeled real studies (``cfg.data``) with their quality strata, split into a finetune pool and a
    disjoint test pool: within each (stratum, class) the studies, in study-id order, go to the test pool
    at the rate ``cfg.test_fraction`` (deterministic, so a resumed run gets the same split)."""
    from proqual.classify.data import study_examples
    from proqual.io.layouts import load_studies

    if not 0.0 < cfg.test_fraction < 1.0:
        raise ValidationError("test_fraction", f"must be in (0, 1), got {cfg.test_fraction}")
    examples, counts = study_examples(
        load_studies(list(cfg.data)),
        scheme=scheme,
        inputs=inputs,
        quality_checkpoint=cfg.quality_checkpoint,
        hq_threshold=cfg.hq_threshold,
        progress=bar("reading and preprocessing studies"),
    )
    log(
        f"{len(examples)} labeled studies; strata: {counts['expert']} expert PI-QUAL, {counts['model']} "
        f"quality model, {counts['unknown']} unknown (left out); {counts['unlabeled']} without a label"
    )
    known = [e for e in examples if e.stratum in ("HQ", "LQ")]
    if len(known) < 4:
        raise ValidationError(
            "data", f"need at least 4 labeled studies with a known quality stratum, got {len(known)}"
        )
    pool, test = [], []
    groups: dict[tuple, list] = {}
    for e in sorted(known, key=lambda e: e.study_id):
        groups.setdefault((e.stratum, e.label), []).append(e)
    for members in groups.values():
        n_test = 0
        for k, e in enumerate(members):
            # to the test pool whenever its running share falls behind the target
            if n_test < round((k + 1) * cfg.test_fraction):
                test.append(e)
                n_test += 1
            else:
                pool.append(e)
    if not pool or not test:
        raise ValidationError("data", f"too few studies to split into finetune and test pools ({len(known)})")
    return pool, test


def _pretrained_encoder(cfg: GridConfig, out: Path, log, images=None) -> Path:
    from proqual.checkpoints import save_checkpoint
    from proqual.classify.pretrain import pretrain_fcmae
    from proqual.nets.profound_conv import profound_conv

    path = out / "pretrained_encoder.pt"
    if path.is_file():
        log(f"pretrained encoder: reusing {path}")
        return path
    data_desc = "the real finetune pool's images (labels unused)"
    if images is None:
        idx = list(range(200_000, 200_000 + cfg.pretrain_studies))
        scheme = get_scheme(cfg.scheme)
        images = [
            e.image
            for e in phantom_examples(
                idx,
                seed=cfg.cohort_seed,
                lq=set(),
                scheme=scheme,
                inputs=INPUTS[cfg.inputs],
                cache_dir=out / "cache",
            )
        ]
        data_desc = f"{len(idx)} HQ phantom studies from index 200000"
    torch.manual_seed(0)
    enc = profound_conv(cfg.preset)
    hist = pretrain_fcmae(
        enc,
        images,
        epochs=cfg.pretrain_epochs,
        device=cfg.device,
        progress=lambda r: log(f"pretraining epoch {r['epoch']}: loss {r['loss']:.4f} ({r['seconds']} s)"),
    )
    save_checkpoint(
        enc,
        path,
        meta={"pretraining": hist, "data": data_desc},
        config={"backbone": "profound-conv", "preset": cfg.preset},
    )
    return path


def _done(csv_path: Path) -> set[tuple]:
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as fh:
        return {
            (int(r["n"]), float(r["finetune_hq_fraction"]), r["init"], int(r["seed"]))
            for r in csv.DictReader(fh)
        }


def run_grid(cfg: GridConfig, out_dir: str | Path, *, log=print) -> Path:
    """Run (or resume) the grid; returns the CSV path. Plots are (re)drawn at the end."""
    from proqual.checkpoints import load_checkpoint
    from proqual.nets.classifier import Classifier
    from proqual.nets.profound_conv import profound_conv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    scheme = get_scheme(cfg.scheme)
    inputs = INPUTS[cfg.inputs]
    t0 = time.time()

    def bar(label):
        return lambda i, n: log(f"{label}: {i}/{n}") if i == n or i % 16 == 0 else None

    if cfg.data:
        pool_ex, test_ex = _real_pools(cfg, scheme, inputs, log, bar)
    else:
        pool_ex, test_ex = _phantom_pools(cfg, scheme, inputs, out, bar)
    by_id = {e.study_id: e for e in pool_ex + test_ex}
    encoder_path = None
    if "pretrained" in cfg.inits:
        encoder_path = (
            Path(cfg.init_checkpoint)
            if cfg.init_checkpoint
            else _pretrained_encoder(cfg, out, log, images=[e.image for e in pool_ex] if cfg.data else None)
        )
    csv_path = out / "runs.csv"
    done = _done(csv_path)
    combos = list(itertools.product(cfg.sizes, cfg.finetune_hq, cfg.inits, cfg.seeds))
    todo = [c for c in combos if (c[0], float(c[1]), c[2], c[3]) not in done]
    log(f"grid: {len(combos)} runs, {len(combos) - len(todo)} already done")
    for k, (n, f, init, seed) in enumerate(todo, start=1):
        t_run = time.time()
        fs = build_finetune_set(_pool(pool_ex), n=n, hq_fraction=f, seed=seed)
        for w in fs.warnings:
            log(f"N={n} finetune HQ={f:.2f} seed {seed}: {w}")
        train = [by_id[i] for i in fs.study_ids]
        torch.manual_seed(seed)
        model = Classifier(profound_conv(cfg.preset), scheme.n_classes)
        if init == "pretrained":
            load_checkpoint(model, encoder_path)
        fcfg = FinetuneConfig(
            mode="scratch" if init == "scratch" else "full",
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=seed,
            device=cfg.device,
            patience=cfg.epochs,
        )
        res = finetune(model, train, scheme=scheme, cfg=fcfg)
        rows = []
        for t in cfg.test_hq:
            test = build_finetune_set(_pool(test_ex), n=cfg.n_test, hq_fraction=t, seed=seed)
            m = evaluate(model, [by_id[i] for i in test.study_ids], scheme, device=cfg.device)
            rows.append(
                {
                    "n": n,
                    "finetune_hq_fraction": f,
                    "init": init,
                    "seed": seed,
                    "test_hq_fraction": t,
                    "auroc": round(m["auroc"], 4),
                    "balanced_accuracy": round(m["balanced_accuracy"], 4),
                    "sensitivity": round(m["sensitivity"], 4),
                    "specificity": round(m["specificity"], 4),
                    "n_test": len(test.items),
                    "finetune_hq_achieved": fs.composition()["hq_fraction"],
                    "epochs_run": res["epochs_run"],
                    "seconds": round(time.time() - t_run, 1),
                }
            )
        new = not csv_path.is_file()
        with open(csv_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerows(rows)
        elapsed = time.time() - t0
        eta = elapsed / k * (len(todo) - k)
        log(
            f"[{k}/{len(todo)}] N={n} finetune HQ={f:.2f} {init} seed {seed}: AUROC by test HQ "
            + ", ".join(f"{r['test_hq_fraction']:.2f}->{r['auroc']:.3f}" for r in rows)
            + f"  (ETA {eta / 60:.1f} min)"
        )
    plot_grid(csv_path, out)
    write_summary(csv_path, out / "summary.md")
    return csv_path


def summarise(csv_path: Path) -> dict:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    agg: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["init"], int(r["n"]), float(r["finetune_hq_fraction"]), float(r["test_hq_fraction"]))
        agg.setdefault(key, []).append(float(r["auroc"]))
    return {k: float(np.nanmean(v)) for k, v in agg.items()}


def write_summary(csv_path: Path, path: Path) -> Path:
    """Markdown tables of the grid: per N, AUROC (mean +- sd over seeds) for every finetune HQ fraction
    (rows) and init x test HQ fraction (columns); then the mean per init and N, and per init and
    finetune HQ fraction, over everything else."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        key = (int(r["n"]), float(r["finetune_hq_fraction"]), r["init"], float(r["test_hq_fraction"]))
        cells.setdefault(key, []).append(float(r["auroc"]))

    def fmt(v: list[float]) -> str:
        if not v:
            return "-"
        return f"{np.mean(v):.3f}" + (f" +- {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")

    ns = sorted({k[0] for k in cells})
    fs = sorted({k[1] for k in cells})
    inits = sorted({k[2] for k in cells})
    ts = sorted({k[3] for k in cells})
    n_seeds = len({r["seed"] for r in rows})
    lines = [f"AUROC, mean +- sd over {n_seeds} seed(s); {len(rows)} rows of `{csv_path.name}`.", ""]
    for n in ns:
        cols = [(i, t) for i in inits for t in ts]
        lines += [f"N = {n}:", ""]
        lines.append("| finetune HQ \\ test HQ | " + " | ".join(f"{i} {t:.1f}" for i, t in cols) + " |")
        lines.append("| --- " * (len(cols) + 1) + "|")
        for f in fs:
            lines.append(
                f"| {f:.2f} | " + " | ".join(fmt(cells.get((n, f, i, t), [])) for i, t in cols) + " |"
            )
        lines.append("")

    def marginal(index: int, values) -> list[str]:
        out = [f"| {'N' if index == 0 else 'finetune HQ'} | " + " | ".join(inits) + " |"]
        out.append("| --- " * (len(inits) + 1) + "|")
        for v in values:
            per = [
                [a for k, vals in cells.items() if k[index] == v and k[2] == i for a in vals] for i in inits
            ]
            out.append(f"| {v} | " + " | ".join(fmt(p) for p in per) + " |")
        return out + [""]

    lines += ["Mean over finetune and test HQ fractions and seeds, by N:", ""] + marginal(0, ns)
    lines += ["Mean over N, test HQ fractions and seeds, by finetune HQ fraction:", ""] + marginal(1, fs)
    path.write_text("\n".join(lines))
    return path


def plot_grid(csv_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = summarise(csv_path)
    inits = sorted({k[0] for k in mean})
    n_max = max(k[1] for k in mean)
    fs = sorted({k[2] for k in mean})
    ts = sorted({k[3] for k in mean})
    fig, axes = plt.subplots(1, len(inits), figsize=(5.2 * len(inits), 4), squeeze=False)
    for k, (ax, init) in enumerate(zip(axes[0], inits, strict=True)):
        grid = np.array([[mean.get((init, n_max, f, t), np.nan) for t in ts] for f in fs])
        im = ax.imshow(grid, vmin=0.4, vmax=1.0, cmap="viridis", origin="lower")
        for i in range(len(fs)):
            for j in range(len(ts)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks(range(len(ts)), [f"{t:.2f}" for t in ts])
        ax.set_yticks(range(len(fs)), [f"{f:.2f}" for f in fs])
        ax.set_xlabel("test HQ fraction")
        if k == 0:  # one y label: the panels share the axis
            ax.set_ylabel("finetune HQ fraction")
        ax.set_title(f"{init}, N={n_max}: AUROC")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.savefig(out / "heatmap.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    ns = sorted({k[1] for k in mean})
    fig, ax = plt.subplots(figsize=(5, 4))
    for init in inits:
        for f in fs:
            y = [np.nanmean([mean.get((init, n, f, t), np.nan) for t in ts]) for n in ns]
            ax.plot(
                ns,
                y,
                marker="o",
                linestyle="-" if init == "pretrained" else "--",
                label=f"{init}, finetune HQ {f:.2f}",
            )
    ax.set_xlabel("finetune set size N")
    ax.set_ylabel("AUROC (mean over test HQ fractions and seeds)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    ax.set_title("label efficiency")
    fig.savefig(out / "label_efficiency.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
