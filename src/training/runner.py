"""Runners: where training jobs run. One interface, ``runner.run(run, plan, report) -> [peak RSS per process]``:
``plan`` is a list of job-name lists, one per worker (see :func:`schedule`), and ``report(kind, name, payload)``
hears ("done", job, stats), ("error", job, message) for bad input and ("crash", job, message) otherwise.

- ``SerialRunner``: every job in this process, one after the other (one worker, or a Python API caller).
- ``LocalProcessRunner``: one spawned process per worker, sharing the cores; a failure terminates the others
  (complete banks stay for a resume).
"""
import multiprocessing
import os
import queue as queue_module

from src.training.jobs import peak_rss, run_jobs
from src.utils.device import set_device


def schedule(costs, workers):
    """Longest job first, each to the least-loaded worker (ties: lowest worker number). [[names] per worker]."""
    loads, plan = [0.0] * workers, [[] for _ in range(workers)]
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        target = loads.index(min(loads))
        plan[target].append(name)
        loads[target] += costs[name]
    return [names for names in plan if names]


def worker_main(run, names, messages, threads):
    """Entry point of a spawned worker process."""
    import src  # noqa: F401  (ONEDNN_MAX_CPU_ISA before mindspore loads)
    import mindspore as ms
    from mindspore.device_context.cpu.op_tuning import threads_num
    from threadpoolctl import threadpool_limits
    threads_num(threads)           # the workers share the cores: MindSpore, BLAS and faiss's OpenMP alike
    threadpool_limits(threads)
    set_device(*run.device, threads=threads)
    ms.set_seed(run.seed)
    run_jobs(run, names, lambda kind, name, payload: messages.put((kind, name, payload)))
    messages.put(("rss", None, peak_rss()))


class SerialRunner:
    """Runs every worker's jobs in this process; ``extractors`` caches networks across jobs and calls."""

    def __init__(self, extractors=None):
        self.extractors = {} if extractors is None else extractors

    def run(self, run, plan, report):
        failed = []

        def relay(kind, name, payload):
            report(kind, name, payload)
            if kind != "done":
                failed.append(name)

        for names in plan:
            run_jobs(run, names, relay, self.extractors)
            if failed:
                break
        return [peak_rss()]


class LocalProcessRunner:
    """One spawned worker process per entry of the plan, ``cpu_count // workers`` threads each."""

    def run(self, run, plan, report):
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        threads = max(1, (os.cpu_count() or 1) // len(plan))
        processes = [context.Process(target=worker_main, args=(run, names, messages, threads), daemon=True)
                     for names in plan]
        for process in processes:
            process.start()
        peaks = [peak_rss()]
        finished, errors = 0, []

        def relay(kind, name, payload):
            report(kind, name, payload)
            if kind != "done":
                errors.append(payload)

        while finished < len(processes):
            try:
                kind, name, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead and not errors:
                    relay("crash", None, f"a worker process died (exit code {dead[0].exitcode}); see {run.log_root}")
                if errors:
                    break
                continue
            if kind == "rss":
                peaks.append(payload)
                finished += 1
            else:
                relay(kind, name, payload)
                if errors:
                    break
        for process in processes:
            if errors and process.is_alive():
                process.terminate()   # completed banks stay for a resume
            process.join()
        return peaks


def make_runner(workers, extractors=None):
    """The runner for ``workers`` workers on this machine."""
    return SerialRunner(extractors) if workers <= 1 else LocalProcessRunner()
