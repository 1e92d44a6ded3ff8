"""Training on a Ray cluster: scheduling overhead, node scaling and a worked estimate for a 4K line (docs/scaling.md).

Every cluster here is local: a head without CPUs and one-CPU worker nodes on 127.0.0.1 (``ray.cluster_utils``,
200 MB object stores, no dashboard), started for each measurement and shut down after it.

- ``--part simulation``: 16 to 256 small jobs on 4 one-CPU nodes. Each job sleeps ``--job_s`` (work that does not
  compete for this machine's 2 cores) and returns ``--result_mb`` of bytes (about a 1024² tile's bank) through the
  object store. Overhead per job = (wall - ceil(jobs / slots) x job_s) x slots / jobs: the slot time Ray adds.
- ``--part training``: the same tiled model (1024² images, 512² tiles: 4 O2O tasks + thumbnail, 12 training
  images, seeded random MobileNetV2) trained by train.py with ``--backend local --workers 1`` on one core
  (taskset) and on both, ``--workers 2``, and ``--backend ray`` on 1 and on 2 one-CPU worker nodes. The training
  seconds in model.json exclude process start-up; the per-job overhead of Ray is (Ray on 1 node - local on one
  core) / jobs: the same CPU, the same work.
- ``--part job4k``: the measured costs behind the estimate. One job of a 4096² image's 1024² tile: a 1024² category
  (16 training images, one 1024² tile + thumbnail) trained with one worker on one core, plus the extra decoding of a 4096²
  PNG over a 1024² one (every job reads its images whole). Then the estimate: 50 categories x (16 tiles +
  thumbnail) on N nodes of ``--cores_per_node`` cores, (a) categories as tasks (run_all_mvtec.sh BACKEND=ray),
  (b) jobs as tasks (train.py --backend ray per category, one category after the other), and the shared
  filesystem's floor at ``--gbit`` Gbit/s.

    .venv/bin/python -m benchmarks.bench_ray --part all      # about 5 minutes on 2 cores
Writes benchmarks/results/ray.json (``--json``) and prints the tables.
"""
import argparse
import math
import os
import time
from pathlib import Path

import src  # noqa: F401  (environment set-up first)
from src.evaluation.metrics import format_table
from src.utils.blas import cpu_name
from src.utils.io import read_json, write_json
from benchmarks.cli_runs import train_from_scratch

ROOT = Path(__file__).resolve().parents[1]
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # every node on 127.0.0.1 (see tests/integration/test_ray.py)
NODE = dict(object_store_memory=200 * 2 ** 20)
SIZE = 1024   # the training part's images; tiles of half that: 4 O2O tasks + thumbnail
TILED = ["--config", str(ROOT / "configs" / "hr_patchcore.yaml"), "-o", f"hr.patch_size={SIZE // 2}",
         "-o", "percentage=0.1", "-o", "hr.task_generator=o2o", "-o", "hr.thumbnail={thumbnail_size: 256}",
         "-o", "hr.val_config={anomaly_syn_fn: [RandomBox], val_sample_ratio: 0.25}"]


class LocalCluster:
    """A head without CPUs and ``nodes`` one-CPU worker nodes on 127.0.0.1, shut down on exit."""

    def __init__(self, nodes):
        self.nodes = nodes

    def __enter__(self):
        from ray.cluster_utils import Cluster
        started = time.perf_counter()
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False, **NODE))
        try:
            for _ in range(self.nodes):
                self.cluster.add_node(num_cpus=1, **NODE)
            self.cluster.wait_for_nodes()
        except BaseException:
            self.cluster.shutdown()
            raise
        self.start_s = time.perf_counter() - started
        return self.cluster

    def __exit__(self, *exc):
        self.cluster.shutdown()


def simulation(args):
    import ray

    def small_job(seconds, size):
        time.sleep(seconds)
        return bytes(size)

    rows = []
    with LocalCluster(args.nodes) as cluster:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        try:
            job = ray.remote(small_job).options(num_cpus=1)
            ray.get([job.remote(0.0, 1) for _ in range(args.nodes)])   # workers started once, as in a long run
            for count in (16, 32, 64, 128, 256):
                started = time.perf_counter()
                pending = [job.remote(args.job_s, int(args.result_mb * 2 ** 20)) for _ in range(count)]
                while pending:   # as the ray runner does: each result fetched when ready, then released
                    ready, pending = ray.wait(pending, num_returns=1)
                    assert len(ray.get(ready[0])) == int(args.result_mb * 2 ** 20)
                    del ready
                wall = time.perf_counter() - started
                ideal = math.ceil(count / args.nodes) * args.job_s
                rows.append(dict(jobs=count, nodes=args.nodes, job_s=args.job_s, result_mb=args.result_mb,
                                 wall_s=round(wall, 3), ideal_s=round(ideal, 3),
                                 overhead_ms_per_job=round((wall - ideal) * args.nodes / count * 1000, 1)))
                print(f"{count} jobs: {wall:.2f} s", flush=True)
        finally:
            ray.shutdown()
    print(format_table(rows, list(rows[0])), flush=True)
    return rows


def generate(root, category, size, n_train, seed=0):
    from src.data.synthetic import generate_category
    if not (Path(root) / category).is_dir():
        generate_category(str(root), category=category, texture="leather", image_size=(size, size), n_train=n_train,
                          n_test_good=1, n_test_defect_per_type=1, defect_types=("stain",), seed=seed)


def training(args):
    data, category = Path(args.work_dir) / "data", f"tiled_{SIZE}"
    generate(data, category, SIZE, 12)
    runs = [("local, 1 worker, 1 core", 0, ["--backend", "local", "--workers", "1"], 1),
            ("local, 1 worker", 0, ["--backend", "local", "--workers", "1"], None),
            ("local, 2 workers", 0, ["--backend", "local", "--workers", "2"], None),
            ("ray, 1 node", 1, ["--backend", "ray"], None), ("ray, 2 nodes", 2, ["--backend", "ray"], None)]
    rows, banks = [], {}
    for label, nodes, extra, cores in runs:
        out = Path(args.work_dir) / "training" / label.replace(", ", "_").replace(" ", "_")
        if nodes:
            with LocalCluster(nodes) as cluster:
                wall, meta = train_from_scratch(data, out, category,
                                                [*TILED, *extra, "--ray_address", cluster.address])
        else:
            wall, meta = train_from_scratch(data, out, category, [*TILED, *extra], cores)
        jobs = meta["jobs"]
        banks[label] = {name: job["bank_sha256"] for name, job in jobs.items()}
        rows.append(dict(run=label, jobs=len(jobs), process_wall_s=round(wall, 2), training_s=meta["seconds"],
                         job_s_sum=round(sum(job["seconds"] for job in jobs.values()), 2),
                         nodes=len({job.get("node") for job in jobs.values()}) if nodes else 0))
        print(f"{label}: {wall:.1f} s", flush=True)
    print(format_table(rows, list(rows[0])), flush=True)
    by = {row["run"]: row for row in rows}
    summary = dict(
        banks_identical=all(b == banks["local, 1 worker"] for b in banks.values()),
        ray_overhead_s_per_job=round((by["ray, 1 node"]["training_s"] - by["local, 1 worker, 1 core"]["training_s"])
                                     / by["ray, 1 node"]["jobs"], 3),
        ray_2_nodes_over_1=round(by["ray, 2 nodes"]["training_s"] / by["ray, 1 node"]["training_s"], 3),
        local_2_workers_over_1=round(by["local, 2 workers"]["training_s"] / by["local, 1 worker"]["training_s"], 3))
    print(summary, flush=True)
    return rows, summary


def decode_seconds(folder, size, repeats=3):
    """(seconds to read one size x size PNG of generated leather, best of ``repeats``; its bytes)."""
    import cv2
    import numpy as np
    from src.data.synthetic import normal_image
    path = Path(folder) / f"decode_{size}.png"
    if not path.is_file():
        cv2.imwrite(str(path), normal_image("leather", np.random.default_rng(0), size, size))
    best = min(_timed(lambda: cv2.imread(str(path), cv2.IMREAD_COLOR)) for _ in range(repeats))
    return best, path.stat().st_size


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def job4k(args, training_summary):
    data, category = Path(args.work_dir) / "data", "one_tile_1024"
    generate(data, category, 1024, 16)
    wall, meta = train_from_scratch(data, Path(args.work_dir) / "job4k", category,
                                    ["--config", ROOT / "configs" / "hr_patchcore.yaml", "-o", "hr.patch_size=1024",
                                     "--workers", "1"], cores=1)   # a job on one core, as each Ray task
    tile_job_s = meta["jobs"]["task_0"]["seconds"]
    thumbnail_s = meta["jobs"]["thumbnail"]["seconds"] if "thumbnail" in meta["jobs"] else 0.0
    driver_s = meta["seconds"] - sum(job["seconds"] for job in meta["jobs"].values())
    decode_4k, png_4k = decode_seconds(args.work_dir, 4096)
    decode_1k, _ = decode_seconds(args.work_dir, 1024)
    overhead = max(training_summary["ray_overhead_s_per_job"], 0.0) if training_summary else 0.0
    held_out = {item["source_index"] for item in (meta["validation"] or {}).get("items", [])
                if item.get("in_bank") is False}
    images = len(meta["train_samples"]) - len(held_out)   # what each job reads
    job_s = tile_job_s + images * (decode_4k - decode_1k)   # a 4K tile job decodes whole 4K images
    thumb_4k_s = thumbnail_s + images * (decode_4k - decode_1k)
    measured = dict(train_images=images, tile_job_1024_s=tile_job_s, thumbnail_job_s=thumbnail_s,
                    driver_s_per_category=round(driver_s, 2), decode_4096_s=round(decode_4k, 3),
                    decode_1024_s=round(decode_1k, 3), png_4096_mb=round(png_4k / 2 ** 20, 1),
                    job_4k_s=round(job_s, 2), thumbnail_4k_s=round(thumb_4k_s, 2), ray_overhead_s_per_job=overhead)
    print(measured, flush=True)
    return measured, estimate(measured, args.categories, args.cores_per_node, args.gbit)


def makespan(durations, slots):
    """Wall seconds of ``durations`` spread longest first over ``slots`` workers (the local runner's schedule)."""
    from src.training.runner import schedule
    costs = {str(k): d for k, d in enumerate(durations)}
    return max(sum(costs[name] for name in names) for names in schedule(costs, slots))


def estimate(m, categories, cores, gbit, tiles=16):
    """Wall minutes of ``categories`` x (``tiles`` 4K tile jobs + thumbnail) on 1-128 nodes of ``cores`` cores, from
    the measured costs ``m``. Every job reads its category's images whole: a node reads them from the shared
    filesystem once, then from its page cache."""
    jobs = [m["job_4k_s"]] * tiles + [m["thumbnail_4k_s"]]
    category_bytes = m["train_images"] * m["png_4096_mb"] * 2 ** 20
    rows = []
    for nodes in (1, 2, 4, 8, 16, 32, 64, 128):
        slots = nodes * cores
        # (a) categories as tasks (run_all_mvtec.sh BACKEND=ray, CPUS_PER_CATEGORY=cores): one category per node
        one_category = m["driver_s_per_category"] + makespan(jobs, cores)
        a_compute = math.ceil(categories / nodes) * one_category
        a_io = categories * category_bytes * 8 / (gbit * 1e9)
        # (b) jobs as tasks (train.py --backend ray), one category after the other; its driver part is serial
        b_compute = categories * (m["driver_s_per_category"] +
                                  makespan([d + m["ray_overhead_s_per_job"] for d in jobs], slots))
        b_io = categories * min(len(jobs), nodes) * category_bytes * 8 / (gbit * 1e9)
        floor = categories * (sum(jobs) + m["driver_s_per_category"]) / slots
        a, b = max(a_compute, a_io), max(b_compute, b_io)
        rows.append(dict(nodes=nodes, cores=slots, categories_as_tasks_min=round(a / 60, 1),
                         jobs_as_tasks_min=round(b / 60, 1), compute_floor_min=round(floor / 60, 1),
                         bottleneck_a=("shared-filesystem reads" if a_io >= a_compute else
                                       "one category's 17 jobs on one node" if nodes >= categories else
                                       "compute: categories per node"),
                         bottleneck_b=("shared-filesystem reads" if b_io >= b_compute else
                                       "per-category driver + slowest job" if slots >= len(jobs) else
                                       "compute: jobs per core")))
    print(format_table(rows, list(rows[0])), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--part", choices=["simulation", "training", "job4k", "all"], default="all")
    parser.add_argument("--nodes", type=int, default=4, help="worker nodes of the simulation (default 4)")
    parser.add_argument("--job_s", type=float, default=0.25, help="a simulated job's seconds (default 0.25)")
    parser.add_argument("--result_mb", type=float, default=2.0, help="a simulated job's result (default 2 MB)")
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--cores_per_node", type=int, default=8)
    parser.add_argument("--gbit", type=float, default=10.0, help="shared filesystem bandwidth (default 10 Gbit/s)")
    parser.add_argument("--work_dir", default=str(ROOT / "demo_output" / "bench_ray"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ray.json"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    result = read_json(args.json, "results") if os.path.isfile(args.json) else {}
    if args.part in ("simulation", "all"):
        result["simulation"] = simulation(args)
    if args.part in ("training", "all"):
        result["training"], result["training_summary"] = training(args)
    if args.part in ("job4k", "all"):
        result["job4k"], result["estimate"] = job4k(args, result.get("training_summary"))
        result["estimate_assumptions"] = dict(categories=args.categories, tiles=16, cores_per_node=args.cores_per_node,
                                              gbit=args.gbit)
    result["cpu"] = cpu_name()
    write_json(args.json, result)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
