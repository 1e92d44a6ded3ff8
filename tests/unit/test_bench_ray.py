"""The Ray benchmark's worked estimate (benchmarks/bench_ray.py): the schedule it assumes, and an estimate that
behaves like one (more nodes never slower, never below the compute floor, the bottleneck named where it moves).
The cluster measurements themselves run only in the benchmark."""
import pytest

from benchmarks import bench_ray

MEASURED = dict(train_images=16, driver_s_per_category=8.0, png_4096_mb=27.0, job_4k_s=50.0, thumbnail_4k_s=7.0,
                ray_overhead_s_per_job=0.4)


def test_makespan_is_the_longest_first_schedule():
    assert bench_ray.makespan([3, 3, 2, 2, 2], 2) == 7       # 3+2+2 | 3+2
    assert bench_ray.makespan([5, 1, 1], 8) == 5
    assert bench_ray.makespan([1] * 17, 8) == 3


def test_the_estimate_falls_with_nodes_to_one_category_per_node_and_names_the_bottleneck():
    rows = bench_ray.estimate(MEASURED, categories=50, cores=8, gbit=10)
    a = [row["categories_as_tasks_min"] for row in rows]
    b = [row["jobs_as_tasks_min"] for row in rows]
    assert a == sorted(a, reverse=True) and b == sorted(b, reverse=True)
    assert all(row["categories_as_tasks_min"] >= row["compute_floor_min"] for row in rows)
    one_category = (8.0 + 50.0 * 2 + 7.0) / 60          # 16 jobs + thumbnail on 8 cores: 50 + 50 + 7
    assert rows[-1]["categories_as_tasks_min"] == pytest.approx(one_category, abs=0.05)
    assert rows[0]["bottleneck_a"].startswith("compute") and rows[-1]["bottleneck_a"].startswith("one category")
    assert rows[-1]["bottleneck_b"].startswith("per-category driver")


def test_a_slow_shared_filesystem_becomes_the_bottleneck():
    rows = bench_ray.estimate(MEASURED, categories=50, cores=8, gbit=0.01)
    assert rows[-1]["bottleneck_a"] == "shared-filesystem reads"
    seconds = 50 * 16 * 27 * 2 ** 20 * 8 / 0.01e9
    assert rows[-1]["categories_as_tasks_min"] == pytest.approx(seconds / 60, abs=0.05)
