"""Benchmark the coreset samplers on projected patch features: the exact greedy (pruned, the default below
``two_round_above``) against the two-round coreset (the default above it): seconds, picks per second,
coverage radius (the largest distance from any patch to its nearest pick), peak memory against the estimate.

Features: 128-d rows laid out as 512-pixel tiles (64 x 64 cells each), generated with spatial structure: a
smooth random field per tile (a coarse gaussian grid, bilinearly upsampled) through a fixed nonlinear map,
plus per-cell texture noise and a few rare outlier cells; or real projected features saved as .npy
(``--features``, e.g. a task's projected rows dumped during training). Each measurement runs in a fresh
child process (spawn) that builds its own features, so peaks do not add up.

Where the exact greedy would run longer than ``--exact-full-below`` patches allow, it runs its first
``--exact-prefix`` picks and its time is extrapolated from its O(N k) cost (per-pick time x k); those rows are
marked ``*`` and have no radius. Radii are exact up to ``--radius-sample`` patches, above that the maximum over
that many randomly drawn patches (a lower bound, marked ``~``; the same patches for both methods).

    .venv/bin/python -m benchmarks.bench_coreset                                   # 0.5 M, 2 M, 8 M at 1%
    .venv/bin/python -m benchmarks.bench_coreset --sizes 786432 --features task_0_projected.npy
"""
import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.patchcore.sampling import ApproximateGreedyCoresetSampler
from src.patchcore.sampling.sampling_def import coreset_size
from src.utils.io import write_json

MIB = 2 ** 20
DIM = 128
TILE_CELLS = 64 * 64
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "coreset.json"


def tile_features(n, seed, dim=DIM, latent=8, grid=8, tiles_per_batch=16):
    """``n`` float32 [n, dim] rows, tile by tile (module doc)."""
    rng = np.random.default_rng(seed)
    lift = rng.normal(0, 1, (latent, 64)).astype(np.float32)
    embed = (rng.normal(0, 1, (64, dim)) / 8).astype(np.float32)
    texture = (rng.normal(0, 1, (16, dim)) / 12).astype(np.float32)
    side = int(np.sqrt(TILE_CELLS))
    coarse = np.linspace(0, grid - 1, side)
    lo = np.floor(coarse).astype(int).clip(0, grid - 2)
    frac = (coarse - lo).astype(np.float32)
    features = np.empty((n, dim), np.float32)
    for start in range(0, n, TILE_CELLS * tiles_per_batch):
        rows = min(TILE_CELLS * tiles_per_batch, n - start)
        tiles = -(-rows // TILE_CELLS)
        g = rng.normal(0, 1, (tiles, grid, grid, latent)).astype(np.float32)
        # bilinear upsampling of the coarse grid to 64 x 64 cells: a smooth field per tile
        gy = g[:, lo] * (1 - frac)[None, :, None, None] + g[:, lo + 1] * frac[None, :, None, None]
        field = gy[:, :, lo] * (1 - frac)[None, None, :, None] + gy[:, :, lo + 1] * frac[None, None, :, None]
        z = field.reshape(-1, latent)[:rows]
        block = np.tanh(z @ lift) @ embed
        block += rng.standard_normal((rows, 16), dtype=np.float32) @ texture
        outliers = rng.random(rows) < 1e-3
        block[outliers] += rng.normal(0, 1.5, (int(outliers.sum()), dim)).astype(np.float32)
        features[start:start + rows] = block
    return features


def load_features(source, n, seed):
    if source is None:
        return tile_features(n, seed)
    features = np.load(source, mmap_mode="r")
    if features.ndim != 2:
        raise SystemExit(f"error: {source}: expected a [N, D] array, got shape {features.shape}")
    return np.array(features[:n], dtype=np.float32)   # in memory: pages of a mapped file would count as growth


def _status(key):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def coverage_radius(points, picks, sample, seed):
    """(radius, exact?): the largest distance of ``points`` (or ``sample`` random ones) to their nearest pick."""
    import faiss
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(np.ascontiguousarray(points[np.sort(picks)]))
    rows = np.arange(len(points)) if len(points) <= sample else \
        np.sort(np.random.default_rng(seed + 1).choice(len(points), sample, replace=False))
    worst = 0.0
    for start in range(0, len(rows), 65536):
        distances, _ = index.search(points[rows[start:start + 65536]], 1)
        worst = max(worst, float(distances.max()))
    return float(np.sqrt(worst)), len(rows) == len(points)


def measure(source, n, percentage, seed, method, exact_prefix, radius_sample):
    """In a child process: one sampler on ``n`` patches; time, radius, memory."""
    points = load_features(source, n, seed)
    n = len(points)
    k = coreset_size(n, percentage)
    two_round_above = 0 if method == "two_round" else None
    warm = ApproximateGreedyCoresetSampler(0.01, seed, two_round_above=two_round_above, progress=False)
    warm.select(points[:20000].copy(), warm.projection(DIM))
    baseline = _status("VmRSS:")
    reset = _reset_peak()
    result = {"method": method, "n": n, "picks": k, "load_average_before": os.getloadavg()[0]}
    if method == "two_round" or exact_prefix is None:
        sampler = ApproximateGreedyCoresetSampler(percentage, seed, two_round_above=two_round_above, progress=False)
        work = points if method == "two_round" else points.copy()   # the exact greedy reorders in place
        started = time.perf_counter()
        picks = sampler.select(work, sampler.projection(DIM))
        result["seconds"] = time.perf_counter() - started
        del work
        result["peak_rss_increment_mib"] = (_status("VmHWM:") - baseline) / MIB if reset else None
        result["estimate_mib"] = sampler.estimate_peak_bytes(n, DIM, projected_resident=True) / MIB
        result["visited_fraction"] = sampler.stats.get("visited_fraction")
        result["radius"], result["radius_exact"] = coverage_radius(points, picks, radius_sample, seed)
        result["extrapolated_from_picks"] = None
    else:
        # the first picks only, then O(N k): per-pick time x k (the pruned greedy visits every point per pick on these features, see visited)
        prefix = min(k, exact_prefix)
        sampler = ApproximateGreedyCoresetSampler(prefix / n + 0.5 / n, seed, progress=False)
        started = time.perf_counter()
        sampler.select(points, sampler.projection(DIM))
        elapsed = time.perf_counter() - started
        result["seconds"] = elapsed / prefix * k
        result["visited_fraction"] = sampler.stats.get("visited_fraction")
        result.update(radius=None, radius_exact=None, peak_rss_increment_mib=None, estimate_mib=None,
                      extrapolated_from_picks=prefix)
    result["picks_per_second"] = k / result["seconds"]
    result["load_average_after"] = os.getloadavg()[0]
    return result


def in_child(*args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 2_000_000, 8_000_000])
    parser.add_argument("--percentage", type=float, default=0.01)
    parser.add_argument("--features", default=None, help="real projected features (.npy [N, D]) instead of generated")
    parser.add_argument("--exact-full-below", type=int, default=1_000_000,
                        help="run the exact greedy in full up to this many patches; above, extrapolate")
    parser.add_argument("--exact-prefix", type=int, default=300, help="picks timed when extrapolating")
    parser.add_argument("--radius-sample", type=int, default=500_000,
                        help="radius over all patches up to this many, else over this many drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)

    import faiss  # noqa: F401  (loads its own BLAS, listed below)
    from threadpoolctl import threadpool_info
    kernels = sorted({f"{i['internal_api']} {i.get('version')}: {i.get('architecture')}" for i in threadpool_info()
                      if i["user_api"] == "blas"})
    rows = []
    for n in args.sizes:
        prefix = None if n <= args.exact_full_below else args.exact_prefix
        exact = in_child(args.features, n, args.percentage, args.seed, "exact", prefix, args.radius_sample)
        two = in_child(args.features, n, args.percentage, args.seed, "two_round", None, args.radius_sample)
        rows.append({"n": exact["n"], "exact": exact, "two_round": two, "speedup": exact["seconds"] / two["seconds"],
                     "radius_ratio": None if exact["radius"] is None else two["radius"] / exact["radius"]})

    source = args.features or "generated tile features (512-px tiles of 64x64 cells, smooth fields + texture)"
    print(f"coreset at {args.percentage:.0%} of N projected patches ({DIM}-d): {source}; {os.cpu_count()} CPUs; "
          f"BLAS {'; '.join(kernels)}")
    print(f"{'N':>9} {'picks':>6} | {'exact s':>9} {'picks/s':>8} {'radius':>7} {'visited':>7} | "
          f"{'2-round s':>9} {'picks/s':>8} {'radius':>7} {'MiB':>6} {'est.':>6} | {'speed-up':>8} {'radius x':>8}")

    def radius(r):
        return "n/a" if r["radius"] is None else f"{r['radius']:.3f}" + ("" if r["radius_exact"] else "~")

    for row in rows:
        e, t = row["exact"], row["two_round"]
        exact_s = f"{e['seconds']:.1f}" + ("*" if e["extrapolated_from_picks"] else "")
        visited = "n/a" if e["visited_fraction"] is None else f"{e['visited_fraction']:.2f}"
        memory = "n/a" if t["peak_rss_increment_mib"] is None else f"{t['peak_rss_increment_mib']:.1f}"
        ratio = "n/a" if row["radius_ratio"] is None else f"{row['radius_ratio']:.2f}"
        print(f"{row['n']:>9} {e['picks']:>6} | {exact_s:>9} {e['picks_per_second']:>8.0f} {radius(e):>7} "
              f"{visited:>7} | {t['seconds']:>9.1f} {t['picks_per_second']:>8.0f} {radius(t):>7} {memory:>6} "
              f"{t['estimate_mib']:>6.1f} | {row['speedup']:>7.1f}x {ratio:>8}")
    print("* extrapolated from the first --exact-prefix picks (O(N k)); ~ radius over a random sample (lower "
          "bound); visited: share of the points the pruned exact greedy computes a distance for, per pick; MiB: "
          "the two-round sampler's peak RSS increment, est.: its estimate")
    write_json(args.json, {"percentage": args.percentage, "features": source, "dim": DIM, "cpus": os.cpu_count(),
                           "blas": kernels, "results": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
