"""src.utils.ray_tasks.collect_as_completed against a stand-in ``ray`` module (no cluster): the tasks finish in
a scripted order, one of them with a lost worker."""
import sys
import types

import pytest

from src.utils.ray_tasks import collect_as_completed


class RayError(Exception):
    pass


def fake_ray(finish_order, results):
    """A ``ray`` whose ``wait`` hands out the refs in ``finish_order``; ``get`` returns ``results[ref]`` or raises
    it when it is an exception; ``cancel`` records its calls in ``ray.cancelled``."""
    ray = types.SimpleNamespace(exceptions=types.SimpleNamespace(RayError=RayError), cancelled=[])

    def wait(refs, num_returns):
        assert num_returns == 1
        first = next(ref for ref in finish_order if ref in refs)
        return [first], [ref for ref in refs if ref != first]

    def get(ref):
        if isinstance(results[ref], Exception):
            raise results[ref]
        return results[ref]

    ray.wait, ray.get = wait, get
    ray.cancel = lambda ref, force: ray.cancelled.append((ref, force))
    return ray


def test_results_come_in_completion_order_and_a_lost_worker_gives_its_last_line(monkeypatch):
    lost_error = RayError("The worker died.\n  Traceback ...\nMemoryError: out of memory\n")
    ray = fake_ray(["ref_c", "ref_a", "ref_b"], {"ref_a": "A", "ref_b": lost_error, "ref_c": "C"})
    monkeypatch.setitem(sys.modules, "ray", ray)
    seen = []
    collect_as_completed({"ref_a": "a", "ref_b": "b", "ref_c": "c"}, lambda name, result: seen.append((name, result)),
                         lambda name, cause: f"lost {name}: {cause}", "jobs", "job")
    assert seen == [("c", "C"), ("a", "A"), ("b", "lost b: MemoryError: out of memory")]
    assert ray.cancelled == []


def test_an_early_stop_cancels_the_pending_tasks(monkeypatch):
    ray = fake_ray(["ref_b", "ref_a", "ref_c"], {"ref_a": "ok", "ref_b": "failed", "ref_c": "ok"})
    monkeypatch.setitem(sys.modules, "ray", ray)
    seen = []

    def handle(name, result):
        seen.append(name)
        return result == "failed"

    pending = {"ref_a": "a", "ref_b": "b", "ref_c": "c"}
    collect_as_completed(pending, handle, None, "jobs", "job", show_pending=True)
    assert seen == ["b"]
    assert sorted(ray.cancelled) == [("ref_a", True), ("ref_c", True)]
    assert pending == {"ref_a": "a", "ref_b": "b", "ref_c": "c"}   # the caller's dict is left as it was


def test_an_error_in_the_handler_cancels_the_pending_tasks(monkeypatch):
    ray = fake_ray(["ref_a", "ref_b"], {"ref_a": "A", "ref_b": "B"})
    monkeypatch.setitem(sys.modules, "ray", ray)

    def handle(name, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_as_completed({"ref_a": "a", "ref_b": "b"}, handle, None, "jobs", "job")
    assert ray.cancelled == [("ref_b", True)]
