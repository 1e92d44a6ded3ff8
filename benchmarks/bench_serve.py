"""Load test of the HTTP service: N concurrent clients for T seconds against serve.py on 127.0.0.1.

It first measures predict's throughput on the same images in one process (the baseline, ``load_model`` then
``predict`` over the images, repeated for about ``--baseline_seconds``), then starts serve.py on a free port,
waits for it, and runs ``--clients`` threads posting the images (multipart, round robin) until ``--seconds``
have passed; everything is bounded and stops by itself. Prints throughput (and its ratio to the baseline),
p50/p95/p99 latency, the error count and the server's RSS over the first and the last 10 s, and writes
``benchmarks/results/serve.json``.

    .venv/bin/python -m benchmarks.bench_serve --model_dir demo_output/pretrained/synthetic_leather \\
        --images demo_output/data/synthetic_leather/test [--clients 4] [--seconds 60]
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

import src  # noqa: F401  (environment set-up first)
from src.app.serve import launch, shut_down
from src.data.folders import images_below
from src.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def baseline(model_dir, paths, seconds):
    """Images per second of predict in this process (model loaded once, the images scored in passes)."""
    from src.inference.predict import load_model
    predictor = load_model(model_dir)
    list(predictor.predict(paths[:predictor.model.batch_size]))   # compile and warm up
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        done += len(list(predictor.predict(paths)))
    return done / (time.perf_counter() - started)


def load(url, payloads, clients, seconds):
    """[(start, seconds, status)] of every request the clients made."""
    records, lock, deadline = [], threading.Lock(), time.perf_counter() + seconds

    def client(number):
        with httpx.Client(timeout=60) as session:
            k = number
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = session.post(f"{url}/predict", files={"file": ("i.png", payloads[k % len(payloads)],
                                                                            "image/png")}).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    records.append((started, time.perf_counter() - started, status))
                k += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def serve_load(args, payloads, base, *options):
    """serve.py (with ``options``) under ``args.clients`` clients for ``args.seconds``: its result entries."""
    process, url = launch(args.model_dir, "--max_batch", str(args.max_batch), "--queue", str(args.queue), *options)
    server = psutil.Process(process.pid)
    rss, stop = [], threading.Event()

    def sample_rss():
        while not stop.is_set():
            rss.append((time.perf_counter(), server.memory_info().rss))
            stop.wait(1.0)

    try:
        warm = sum(httpx.post(f"{url}/predict", files={"file": ("i.png", payload, "image/png")},
                              timeout=120).status_code == 200
                   for payload in payloads[:args.max_batch])   # warm the service up before measuring
        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        started = time.perf_counter()
        records = load(url, payloads, args.clients, args.seconds)
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
    finally:
        shut_down(process)
    latencies = np.array([seconds for _, seconds, status in records if status == 200])
    errors = sum(status != 200 for _, _, status in records)
    first = [value for t, value in rss if t - started <= 10]
    last = [value for t, value in rss if t - started >= elapsed - 10]
    result = {"clients": args.clients, "seconds": round(elapsed, 2), "requests": len(records), "errors": errors,
              "answered": len(latencies) + warm, "throughput_per_s": len(latencies) / elapsed,
              "baseline_per_s": base, "throughput_over_baseline": len(latencies) / elapsed / base,
              "latency_ms": {q: float(np.percentile(latencies, p) * 1000) for q, p in (("p50", 50), ("p95", 95),
                                                                                       ("p99", 99))},
              "rss_mib_first_10s": float(np.mean(first)) / 2 ** 20, "rss_mib_last_10s": float(np.mean(last)) / 2 ** 20,
              "max_batch": args.max_batch, "queue": args.queue, "options": list(options)}
    result["rss_growth"] = result["rss_mib_last_10s"] / result["rss_mib_first_10s"] - 1
    print(f"[serve{' ' + ' '.join(options[:1]) if options else ''}] {args.clients} clients, {elapsed:.0f} s: "
          f"{result['throughput_per_s']:.2f} images/s ({result['throughput_over_baseline']:.2f}x predict in one "
          f"process), {errors} errors of {len(records)}; latency p50 {result['latency_ms']['p50']:.0f} ms, p95 "
          f"{result['latency_ms']['p95']:.0f} ms, p99 {result['latency_ms']['p99']:.0f} ms; server RSS "
          f"{result['rss_mib_first_10s']:.0f} MiB (first 10 s) -> {result['rss_mib_last_10s']:.0f} MiB (last 10 s), "
          f"{100 * result['rss_growth']:+.1f}%")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=str(ROOT / "demo_output" / "pretrained" / "synthetic_leather"))
    parser.add_argument("--images", default=str(ROOT / "demo_output" / "data" / "synthetic_leather" / "test"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline_seconds", type=float, default=20.0)
    parser.add_argument("--max_batch", type=int, default=4)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--records", action="store_true", help="then the same load with records on (SQLite in a "
                                                                 "temporary folder): p99 against the run without")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    paths = images_below(args.images)
    if not paths:
        raise SystemExit(f"error: {args.images}: no images")
    payloads = [Path(p).read_bytes() for p in paths]
    base = baseline(args.model_dir, paths, args.baseline_seconds)
    print(f"[baseline] predict in one process: {base:.2f} images/s")
    result = dict(serve_load(args, payloads, base), images=len(paths), model_dir=args.model_dir)
    if args.records:
        with tempfile.TemporaryDirectory(prefix="bench-records-") as folder:
            with_records = serve_load(args, payloads, base, "--records", folder)
            from src.records.store import RecordStore
            stored = RecordStore(folder).query(limit=1)["total"]
        with_records["records"] = stored
        with_records["records_per_answer"] = stored / max(1, with_records["answered"])
        result["with_records"] = with_records
        result["p99_with_records_over_without"] = with_records["latency_ms"]["p99"] / result["latency_ms"]["p99"]
        print(f"[records] {stored} records for {with_records['answered']} answers; p99 with records "
              f"{with_records['latency_ms']['p99']:.0f} ms, {result['p99_with_records_over_without']:.2f}x without")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    write_json(args.json, result)
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
