"""Benchmark the approximate greedy coreset: plain greedy vs pruned greedy (same picks), time and memory.

Features: a seeded mixture of gaussians in a low-dimensional subspace plus isotropic noise, float32
[N, D]. Each measurement runs in a fresh child process (spawn) that builds the features and warms
up the libraries on a small slice. Times (wall, and CPU of all the child's threads, which other work
on a shared machine disturbs less) come from children with the default allocator settings.
The pruned sampler's memory comes from one more child, run with a fixed glibc mmap threshold so
that resident memory follows what is allocated: it records its resident set size just before
sampling and its peak during sampling (VmHWM, reset through /proc/self/clear_refs where the kernel
allows it); the difference, the sampler's own increment, is compared with ``estimate_peak_bytes``.

    .venv/bin/python benchmarks/bench_coreset.py                       # N=200,000 x 1024, 10% and 1%
    .venv/bin/python benchmarks/bench_coreset.py --n 20000 --dim 256   # quick
    .venv/bin/python benchmarks/bench_coreset.py --skip-plain-above 2000   # extrapolate slow plain runs
"""
import argparse
import gc
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import src  # noqa: E402,F401  (environment set-up first)
from src.utils.io import write_json  # noqa: E402
from src.patchcore.sampling.kcenter_greedy import (ApproximateGreedyCoresetSampler, estimate_peak_bytes,  # noqa: E402
                                                 greedy_coreset_plain, project_features)
from src.patchcore.sampling.sampling_def import coreset_size  # noqa: E402

MIB = 2 ** 20
ESTIMATE_TOLERANCE = 0.15
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "coreset.json"


def make_features(n, dim, seed, latent_dim, clusters, noise, chunk=16384):
    """Gaussian clusters (means ~ N(0, 1), per-cluster axis scales in [0.1, 0.4]) in a random
    ``latent_dim``-dimensional subspace of R^dim, plus N(0, noise^2) per coordinate; float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (clusters, latent_dim))
    scales = rng.uniform(0.1, 0.4, (clusters, latent_dim))
    basis = np.linalg.qr(rng.normal(size=(dim, latent_dim)))[0].T.astype(np.float32)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):  # chunks keep the generator's own temporaries small
        rows = min(chunk, n - start)
        labels = rng.integers(0, clusters, rows)
        latent = (means[labels] + rng.normal(size=(rows, latent_dim)) * scales[labels]).astype(np.float32)
        features[start:start + rows] = latent @ basis
        features[start:start + rows] += rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(noise)
    return features


def _proc_status(key):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak_rss():
    """Make VmHWM restart from the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _clocks():
    """Wall and CPU (all threads of this process) seconds: the machine may be shared, and CPU time
    is less sensitive to the others' load."""
    return np.array([time.perf_counter(), time.process_time()])


def measure(data, percentage, seed, pruned, plain_prefix):
    """In a child process: time one sampling and measure its peak RSS increment.

    ``plain_prefix``: time the plain greedy on only this many picks and extrapolate (no memory).
    """
    features = make_features(**data)
    n, dim = features.shape
    ApproximateGreedyCoresetSampler(0.05, seed, pruned=pruned, progress=False).run(features[:8192])  # warm-up
    gc.collect()
    load_before = os.getloadavg()[0]
    baseline = _proc_status("VmRSS:")
    peak_reset = _reset_peak_rss()
    result = {"pruned": pruned, "picks": coreset_size(n, percentage), "load_average_before": load_before}
    if plain_prefix is None:
        sampler = ApproximateGreedyCoresetSampler(percentage, seed, pruned=pruned, progress=False)
        start = _clocks()
        _, indices = sampler.run(features)
        result["seconds"], result["cpu_seconds"] = _clocks() - start
        result["peak_rss_increment_bytes"] = _proc_status("VmHWM:") - baseline
        result["peak_rss_method"] = "VmHWM after clear_refs" if peak_reset else "VmHWM (process lifetime)"
        result["estimate_bytes"] = estimate_peak_bytes(n, dim, percentage, pruned=pruned)
        result["visited_fraction"] = sampler.stats["visited_fraction"]
        result["extrapolated_from_picks"] = None
    else:
        # Same set-up as the sampler (seeded projection, then start points), then the greedy alone.
        defaults = ApproximateGreedyCoresetSampler(percentage, seed)
        start = _clocks()
        rng = np.random.default_rng(seed)
        points = project_features(features, defaults.projection_dim, rng)
        start_indices = rng.choice(n, min(defaults.num_starting_points, n), replace=False)
        setup = _clocks() - start
        start = _clocks()
        greedy_coreset_plain(points, 1, start_indices, progress=False)
        first = _clocks() - start
        start = _clocks()
        indices = greedy_coreset_plain(points, plain_prefix, start_indices, progress=False)
        per_pick = (_clocks() - start - first) / max(1, plain_prefix - 1)
        result["seconds"], result["cpu_seconds"] = setup + first + per_pick * (result["picks"] - 1)
        result["extrapolated_from_picks"] = plain_prefix
        result["visited_fraction"] = 1.0
    result["load_average_after"] = os.getloadavg()[0]
    result["indices"] = indices.tolist()
    return result


def run_in_child(*args, for_memory=False):
    # For memory, a fixed mmap threshold: glibc otherwise raises it after each large free, so later
    # arrays land on the heap, where freed pages stay resident and RSS stops following allocations.
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if for_memory else {}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # a spawned child inherits the environment
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure, *args).result()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of feature rows")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension")
    parser.add_argument("--percentages", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=16, help="dimension of the subspace holding the clusters")
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.01, help="std of the isotropic noise per coordinate")
    parser.add_argument("--skip-plain-above", type=int, default=None, metavar="PICKS",
                        help="time the plain greedy on its first PICKS picks only and extrapolate")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    args = parser.parse_args(argv)

    data = {"n": args.n, "dim": args.dim, "seed": args.seed, "latent_dim": args.latent_dim,
            "clusters": args.clusters, "noise": args.noise}
    rows = []
    for percentage in args.percentages:
        picks = coreset_size(args.n, percentage)
        prefix = args.skip_plain_above if args.skip_plain_above and picks > args.skip_plain_above else None
        plain = run_in_child(data, percentage, args.seed, False, prefix)
        pruned = run_in_child(data, percentage, args.seed, True, None)
        memory = run_in_child(data, percentage, args.seed, True, None, for_memory=True)
        compared = len(plain["indices"])
        row = {
            "percentage": percentage,
            "picks": picks,
            "plain_seconds": plain["seconds"],
            "plain_extrapolated_from_picks": plain["extrapolated_from_picks"],
            "pruned_seconds": pruned["seconds"],
            "speedup": plain["seconds"] / pruned["seconds"],
            "plain_cpu_seconds": plain["cpu_seconds"],
            "pruned_cpu_seconds": pruned["cpu_seconds"],
            "cpu_speedup": plain["cpu_seconds"] / pruned["cpu_seconds"],
            "identical_picks": pruned["indices"][:compared] == plain["indices"],
            "picks_compared": compared,
            "pruned_repeatable": pruned["indices"] == memory["indices"],
            "pruned_visited_fraction": pruned["visited_fraction"],
            "pruned_peak_rss_increment_mib": memory["peak_rss_increment_bytes"] / MIB,
            "pruned_estimate_mib": memory["estimate_bytes"] / MIB,
            "pruned_estimate_ratio": memory["peak_rss_increment_bytes"] / memory["estimate_bytes"],
            "peak_rss_method": memory["peak_rss_method"],
            "load_average_1min": {"plain": [plain["load_average_before"], plain["load_average_after"]],
                                  "pruned": [pruned["load_average_before"], pruned["load_average_after"]]},
        }
        row["estimate_within_tolerance"] = abs(row["pruned_estimate_ratio"] - 1) <= ESTIMATE_TOLERANCE
        rows.append(row)

    print(f"coreset sampling, N={args.n} x D={args.dim}: {args.clusters} gaussian clusters in a "
          f"{args.latent_dim}-dim subspace + noise {args.noise}; {os.cpu_count()} CPUs")
    print(f"{'pct':>6} {'picks':>7} {'plain s':>9} {'pruned s':>9} {'speedup':>8} {'cpu speedup':>11} "
          f"{'same picks':>12} {'visited':>8} {'peak MiB':>9} {'est. MiB':>9} {'ratio':>6}")
    for row in rows:
        plain_s = f"{row['plain_seconds']:.1f}" + ("*" if row["plain_extrapolated_from_picks"] else "")
        same = f"{'yes' if row['identical_picks'] else 'NO'} {row['picks_compared']}"
        print(f"{row['percentage']:>6.1%} {row['picks']:>7} {plain_s:>9} {row['pruned_seconds']:>9.2f} "
              f"{row['speedup']:>7.1f}x {row['cpu_speedup']:>10.1f}x {same:>12} {row['pruned_visited_fraction']:>8.2%} "
              f"{row['pruned_peak_rss_increment_mib']:>9.1f} {row['pruned_estimate_mib']:>9.1f} "
              f"{row['pruned_estimate_ratio']:>6.2f}")
    if any(row["plain_extrapolated_from_picks"] for row in rows):
        print("* extrapolated from the first --skip-plain-above picks (per-pick time x picks + set-up)")
    print(f"visited: points the pruned greedy computes a distance for, per pick / N. peak MiB: the pruned "
          f"sampler's peak RSS increment; target |ratio - 1| <= {ESTIMATE_TOLERANCE:.0%}")
    write_json(args.json, {"n": args.n, "dim": args.dim, "data": data, "cpus": os.cpu_count(), "results": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
