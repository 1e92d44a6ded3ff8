"""Runners: where training jobs run, chosen by name (``runner.backend``, ``src/training/backends.py``). One interface:
``runner.run(run, needs, report, say) -> [peak RSS per process]``, where ``needs`` maps each job to train to its
``JobNeeds`` (work and memory) and ``report(kind, name, payload)`` hears ("done", job, JobResult), ("error", job,
message) for bad input and ("crash", job, message) otherwise; the caller writes each result (the workers write
nothing into the checkpoint folder).

- ``ray``: every job a Ray task on a cluster (``src/training/ray_runner.py``).
- ``local``: this machine. One worker: every job in this process, one after the other (also a Python API
  caller's choice). More: one spawned process per worker, sharing the cores, jobs spread by :func:`schedule`;
  a failure terminates the others (complete banks stay for a resume). The worker count is the one asked for,
  else as many as fit in the available memory (at most one per core and one per job).
"""
import logging
import multiprocessing
import os
import queue as queue_module
import psutil

from src.training.jobs import MIB, peak_rss, prepare_worker, run_jobs
from src.utils.checks import positive_int
from src.utils.errors import InputError


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
    prepare_worker(run, threads)   # the workers share the cores
    run_jobs(run, names, lambda kind, name, payload: messages.put((kind, name, payload)))
    messages.put(("rss", None, peak_rss()))


def _serial(run, plan, report, extractors):
    """Every worker's jobs in this process; ``extractors`` caches networks across jobs and calls."""
    failed = []

    def relay(kind, name, payload):
        report(kind, name, payload)
        if kind != "done":
            failed.append(name)

    for names in plan:
        run_jobs(run, names, relay, extractors)
        if failed:
            break
    return [peak_rss()]


def _processes(run, plan, report):
    """One spawned worker process per entry of the plan, ``cpu_count // workers`` threads each."""
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


class LocalRunner:
    """This machine (module docstring). ``workers``: None (as many as fit) or a positive integer."""

    def __init__(self, workers=None, extractors=None):
        self.workers = positive_int(workers, "workers", optional=True)
        self.extractors = {} if extractors is None else extractors

    def choose_workers(self, needs, say):
        """The worker count: the one asked for, else what the largest job's memory allows. Says why."""
        per_worker = max(need.memory for need in needs.values())
        available = psutil.virtual_memory().available
        chosen = self.workers or int(min(len(needs), os.cpu_count() or 1, max(1, available // per_worker)))
        say("%.0f MiB available, %.0f MiB per worker -> %d worker(s)%s", available / MIB, per_worker / MIB, chosen,
            "" if self.workers is None else " (as requested)")
        if chosen * per_worker > available:
            say("Warning: %d workers need about %.0f MiB, more than the %.0f MiB available", chosen,
                chosen * per_worker / MIB, available / MIB, level=logging.WARNING)
        return chosen

    def run(self, run, needs, report, say):
        if not needs:
            return [peak_rss()]
        costs = {name: need.cost for name, need in needs.items()}
        plan = schedule(costs, self.choose_workers(needs, say))
        for number, names in enumerate(plan):
            say("Worker %d: %s (estimated cost %.3g Mpx)", number, ", ".join(names), sum(costs[n] for n in names) / 1e6)
        return _serial(run, plan, report, self.extractors) if len(plan) == 1 else _processes(run, plan, report)


def train_jobs(runner, run, needs, checkpoint_root, say):
    """Train the jobs of ``needs`` on ``runner``, writing each bank into ``checkpoint_root`` as it arrives; the
    first failure raises (InputError for bad input). Returns ({name: stats}, [peak RSS])."""
    stats, errors = {}, []

    def report(kind, name, payload):
        if kind == "done":
            payload.write(checkpoint_root)
            stats[name] = payload.stats
            say("%s done%s: bank %d of %d patches in %.1f s", name,
                f" on node {payload.stats['node']}" if "node" in payload.stats else "", payload.stats["bank_size"],
                payload.stats["num_patches"], payload.stats["seconds"])
        else:
            errors.append((kind, payload))

    peaks = runner.run(run, needs, report, say)
    if errors:
        kind, message = errors[0]
        raise InputError(message) if kind == "error" else RuntimeError(message)
    return stats, peaks
