"""src/training/runner.py and ray_runner.py: scheduling, landing a job's result, runners by name, Ray task options."""
import dataclasses
import os

import pytest

import src  # noqa: F401
from src.training.runner import schedule
from src.utils.errors import InputError


def test_schedule_balances_cost_largest_first_not_round_robin():
    costs = {"a": 8, "b": 7, "c": 6, "d": 5, "e": 4, "f": 1}
    plan = schedule(costs, 2)
    assert plan == [["a", "d", "e"], ["b", "c", "f"]]   # loads 17 and 14; round robin would give 18 and 13
    assert schedule({"a": 1}, 3) == [["a"]]


def test_a_job_result_lands_whole_only_when_every_file_matches_its_sha256(tmp_path):
    from src.training.jobs import JobResult
    built = tmp_path / "worker"
    built.mkdir()
    (built / "faiss.index").write_bytes(b"index bytes")
    (built / "bank.json").write_text("{}")
    result = JobResult.collect("task_0", built, {"bank_size": 1})
    root = tmp_path / "model"
    result.write(root)
    assert sorted(os.listdir(root / "task_0")) == ["bank.json", "faiss.index"]
    assert (root / "task_0" / "faiss.index").read_bytes() == b"index bytes"
    damaged = dataclasses.replace(result, files={**result.files, "faiss.index": b"index bytez"})
    with pytest.raises(RuntimeError, match="task_0/faiss.index"):
        damaged.write(root)
    assert (root / "task_0" / "faiss.index").read_bytes() == b"index bytes"   # the earlier bank stays
    assert not [name for name in os.listdir(root) if name.startswith(".")]


def test_runners_are_chosen_by_name():
    from src.training.backends import build_runner
    from src.training.runner import LocalRunner
    runner = build_runner("local", workers=2)
    assert isinstance(runner, LocalRunner) and runner.workers == 2
    with pytest.raises(InputError, match="runner.backend.*unknown backend 'cluster'.*known: local, ray"):
        build_runner("cluster")
    with pytest.raises(InputError, match="workers"):
        build_runner("local", workers=0)


def test_a_ray_task_asks_for_its_jobs_memory_and_one_device_of_the_target():
    from src.training.ray_runner import task_options
    from src.training.memory import JobNeeds
    need = JobNeeds(cost=1e6, memory=3 * 2 ** 30)
    cpu = task_options(need, "CPU", 2, 3)
    assert cpu == {"num_cpus": 2, "memory": 3 * 2 ** 30, "max_retries": 3, "retry_exceptions": False}
    assert task_options(need, "Ascend", 1, 2)["resources"] == {"NPU": 1}
    assert task_options(need, "GPU", 1, 2)["num_gpus"] == 1 and "resources" not in task_options(need, "GPU", 1, 2)
    assert task_options(need, "Ascend", 1, 2, {"bank_slot": 1})["resources"] == {"bank_slot": 1, "NPU": 1}


@pytest.mark.parametrize("resources", [{"CPU": 1}, {"bank_slot": 0}, {"bank_slot": True}, ["bank_slot"]])
def test_custom_ray_resources_must_be_names_with_positive_amounts(resources):
    from src.training.ray_runner import check_resources
    assert check_resources({"bank_slot": 1, "big_memory": 0.5}) == {"bank_slot": 1, "big_memory": 0.5}
    with pytest.raises(InputError, match="runner.resources"):
        check_resources(resources)
