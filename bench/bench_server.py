"""Benchmark: the ProQual MONAI Label server over REST on PI-CAI-sized phantom studies.

Starts ``monailabel start_server`` with the app on loopback (studies written by
``proqual.phantom.write_picai(..., preset="picai")``) and measures

1. REST latency (p50, p95) of ``quality``, ``pirads`` and ``isup`` on a study that is not in the
   server's study cache (``cache_size 1`` and alternating studies, so each figure includes reading and
   preprocessing), and of all three in a row on one such study (the shared cache reads and
   preprocesses once);
2. the server's peak resident memory (sampled every 50 ms);
3. a concurrent load: ``--clients`` threads sending random inference requests for ``--load-seconds``;
   every answer is checked (status 200, the right study, the task's fields, probabilities summing to
   1), and the server's memory at the start and end of the load is reported.

Shipped weights (``model/*.pt``) are used when present, else small untrained checkpoints of the same
architectures are written to the work folder (figures then say so).

    .venv/bin/python bench/bench_server.py [--repeats 10] [--clients 8] [--load-seconds 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from server_harness import monailabel_server  # noqa: E402

TASKS = ("quality", "pirads", "isup")


def checkpoints(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """--conf checkpoint pairs: the shipped file when present, else a small untrained one."""
    from proqual.checkpoints import save_checkpoint
    from proqual.classify.data import INPUTS
    from proqual.classify.infer import build_classifier, classifier_config
    from proqual.labels import get_scheme
    from proqual.nets.quality_net import QualityNet, QualityNetConfig
    from proqual.quality.training import save_quality_checkpoint

    conf, origin = {}, {}
    for name in TASKS:
        shipped = REPO / "model" / f"{name}.pt"
        path = folder / f"{name}.pt"
        if shipped.is_file():
            conf[f"{name}_checkpoint"], origin[name] = str(shipped), "shipped"
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if name == "quality":
            save_quality_checkpoint(QualityNet(QualityNetConfig()), path, meta={"bench": True})
        else:
            scheme = get_scheme("pirads_ge4" if name == "pirads" else "cspca")
            config = classifier_config(preset="small-cpu", scheme=scheme, inputs=INPUTS["small"])
            save_checkpoint(build_classifier(config), path, meta={"bench": True}, config=config)
        conf[f"{name}_checkpoint"], origin[name] = str(path), "untrained small (no shipped file)"
    return conf, origin


class RssSampler(threading.Thread):
    """Samples a process's resident memory (with its children) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        import psutil

        try:
            return self.proc.memory_info().rss
        except psutil.Error:
            return 0

    def run(self) -> None:
        while not self._stop.is_set():
            self.last = self.rss()
            self.peak = max(self.peak, self.last)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()


def infer(url: str, task: str, image: str, timeout: float = 300) -> tuple[float, requests.Response]:
    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/{task}", params={"image": image, "output": "json"}, timeout=timeout)
    return time.perf_counter() - t0, r


def check(task: str, study: dict, r: requests.Response) -> str | None:
    """None when the answer is right, else what is wrong."""
    if r.status_code != 200:
        return f"{task} {study['anchor']}: HTTP {r.status_code} {r.text[:200]}"
    out = r.json()
    if (
        out.get("anchor") != study["anchor"]
        or out.get("task") != task
        or not out.get("model", {}).get("sha256")
    ):
        return f"{task} {study['anchor']}: wrong study/task/model in the answer"
    if task == "quality":
        if not {"T2W", "ADC", "HBV"} <= set(out["sequences"]) or out["study_piqual"] not in (1, 2, 3):
            return f"quality {study['anchor']}: incomplete result"
    else:
        if abs(sum(out["probabilities"].values()) - 1) > 1e-3 or not 0 <= out["positive_probability"] <= 1:
            return f"{task} {study['anchor']}: probabilities do not sum to 1"
    return None


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2, help="PI-CAI-sized phantom studies (>= 2)")
    ap.add_argument("--repeats", type=int, default=10, help="timed requests per task")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    if args.studies < 2:
        ap.error("--studies must be >= 2 (latencies alternate studies to keep the cache cold)")

    from proqual.phantom import write_picai

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="proqual-bench-server-") as tmp:
        tmp = Path(tmp)
        write_picai(tmp / "studies", n=args.studies, seed=0, preset="picai")
        conf, origin = checkpoints(tmp / "model")
        conf.update(store=str(tmp / "store"), device="cpu", cache_size="1")
        results["weights"] = origin
        env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
        t_start = time.perf_counter()
        with monailabel_server(tmp / "studies", conf=conf, env=env, timeout=300) as srv:
            results["startup_s"] = round(time.perf_counter() - t_start, 2)
            sampler = RssSampler(srv.process.pid)
            sampler.start()
            studies = srv.get("/proqual/studies").json()
            url = srv.url
            # warm-up: load every model once
            for task in TASKS:
                _, r = infer(url, task, studies[0]["anchor"])
                err = check(task, studies[0], r)
                if err:
                    print("warm-up failed:", err, srv.explain(r), sep="\n")
                    return 1
            lat: dict[str, list[float]] = {t: [] for t in (*TASKS, "all three")}
            inside: dict[str, list[float]] = {t: [] for t in TASKS}  # the task's own time in the server
            k = 0
            for _ in range(args.repeats):
                for task in TASKS:
                    k += 1
                    study = studies[k % len(studies)]
                    dt, r = infer(url, task, study["anchor"])
                    assert check(task, study, r) is None, check(task, study, r)
                    lat[task].append(dt)
                    inside[task].append(r.json()["seconds"])
                k += 1
                study = studies[k % len(studies)]
                t0 = time.perf_counter()
                for task in TASKS:
                    _, r = infer(url, task, study["anchor"])
                    assert check(task, study, r) is None, check(task, study, r)
                lat["all three"].append(time.perf_counter() - t0)
            results["latency_s"] = {
                t: {"p50": round(statistics.median(v), 3), "p95": round(pct(v, 95), 3), "n": len(v)}
                for t, v in lat.items()
            }
            results["server_task_s_p50"] = {t: round(statistics.median(v), 3) for t, v in inside.items()}
            slowest = max(results["latency_s"][t]["p50"] for t in TASKS)
            results["all_three_over_slowest_p50"] = round(
                results["latency_s"]["all three"]["p50"] / slowest, 3
            )
            results["peak_rss_mb_latency_phase"] = round(sampler.peak / 2**20, 1)

            # concurrent load
            rss_start = sampler.rss()
            stop_at = time.monotonic() + args.load_seconds
            counts, errors, load_lat = {t: 0 for t in TASKS}, [], []
            lock = threading.Lock()

            def client(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    task, study = rng.choice(TASKS), rng.choice(studies)
                    try:
                        dt, r = infer(url, task, study["anchor"])
                        err = check(task, study, r)
                    except requests.RequestException as exc:
                        dt, err = 0.0, f"{task}: {exc}"
                    with lock:
                        if err:
                            errors.append(err)
                        else:
                            counts[task] += 1
                            load_lat.append(dt)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
            rss_end = sampler.rss()
            sampler.stop()
            results["load"] = {
                "clients": args.clients,
                "seconds": round(wall, 1),
                "answered_ok": counts,
                "errors": len(errors),
                "first_errors": errors[:5],
                "throughput_per_s": round(sum(counts.values()) / wall, 2),
                "latency_p50_s": round(statistics.median(load_lat), 3) if load_lat else None,
                "latency_p95_s": round(pct(load_lat, 95), 3) if load_lat else None,
                "rss_mb_start": round(rss_start / 2**20, 1),
                "rss_mb_end": round(rss_end / 2**20, 1),
                "server_alive": srv.alive(),
            }
            results["peak_rss_mb"] = round(sampler.peak / 2**20, 1)
            results["cache"] = srv.get("/info/").json()["proqual"].get("cache")

    print(json.dumps(results, indent=2))
    print(
        "\nlatency p50/p95 (s): "
        + "; ".join(f"{t} {v['p50']}/{v['p95']}" for t, v in results["latency_s"].items())
        + f"\nall three / slowest single (p50): {results['all_three_over_slowest_p50']}"
        + f"\npeak server RSS: {results['peak_rss_mb']} MB"
        + f"\nload: {results['load']['clients']} clients, {results['load']['seconds']} s, "
        f"{sum(results['load']['answered_ok'].values())} answers, {results['load']['errors']} errors"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if not results["load"]["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
