"""The ``ray`` runner: every training job is a Ray task (``train.py --backend ray [--ray_address auto|HOST:PORT]``).

Imported only when that backend is chosen: without it nothing imports Ray (requirements-distributed.txt).

- Resources: each task asks for ``cpus_per_job`` CPUs and its job's memory estimate (runtime plus job, bytes), with
  ``--device_target Ascend`` or ``GPU`` one ``NPU`` or ``GPU`` (the task takes its device id from the one Ray gives
  it), and any custom ``resources`` (config ``runner.resources``, e.g. ``{bank_slot: 1}`` to train on the nodes
  started with that resource, as many jobs at once as they have). Ray places the tasks; nothing is planned per
  worker. Each job's node is recorded in model.json (``jobs.<name>.node``) and in train.log.
- Images: read on the worker's node from their paths, so every node must see the dataset (and the backbone
  checkpoint) at the same path, e.g. on a shared filesystem. Before training, a task checks the sha256 of each
  training image it reads against the driver's: a node that sees other bytes fails the job with a one-line
  error instead of training a different bank.
- Banks: a task returns its ``JobResult`` (the files' bytes and sha256) through the object store; the driver
  verifies and writes it into the model folder, so the workers need no access to it. A resume works as on one
  machine: complete, verified banks are not sent to the cluster.
- Logs: each job's log comes back with its result and is written to the driver's log folder.
- Faults: a task whose worker dies is retried (``max_retries``); a job that fails (bad input or a crash) is not
  retried: its one-line error ends the run and the remaining tasks are cancelled, as on Ctrl-C. Finished banks
  stay for a resume.
"""
import dataclasses
import os
import tempfile

import ray

from src.training.jobs import peak_rss, prepare_worker, run_jobs, sample_identity
from src.utils.errors import InputError
from src.utils.ray_tasks import collect_as_completed

DEVICE_RESOURCES = {"Ascend": "NPU", "GPU": "GPU"}
# Ray reuses a worker process for further tasks: its networks stay built for the next job of the same weights
_NETWORKS = {}


def task_options(need, device_target, cpus_per_job, max_retries, resources=None):
    """Ray's options for one job's task: CPUs, memory, the device resource, custom resources and the retry count."""
    options = {"num_cpus": cpus_per_job, "memory": int(need.memory), "max_retries": max_retries,
               "retry_exceptions": False}
    custom = dict(resources or {})
    resource = DEVICE_RESOURCES.get(device_target)
    if resource == "GPU":
        options["num_gpus"] = 1
    elif resource:
        custom[resource] = 1
    if custom:
        options["resources"] = custom
    return options


def check_resources(resources):
    """``runner.resources``: None or {name: positive amount}, names other than Ray's own CPU/GPU/memory."""
    if resources is None:
        return None
    if not isinstance(resources, dict) or not all(
            isinstance(name, str) and name not in ("CPU", "GPU", "memory", "object_store_memory")
            and isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0
            for name, amount in resources.items()):
        raise InputError("runner.resources", f"must map custom resource names to positive amounts, got {resources!r}")
    return dict(resources)


def _device_id(device_target, default):
    """The device id Ray assigned to this task (the first of its ``NPU``/``GPU`` ids), else ``default``."""
    resource = DEVICE_RESOURCES.get(device_target)
    if resource is None:
        return default
    ids = ray.get_runtime_context().get_accelerator_ids().get(resource) or [default]
    return int(ids[0])


@ray.remote
def train_remote(run, name, image_sha256, threads):
    """One job on a cluster node: [(kind, name, payload)] as ``run_jobs`` reports them, the job's log text and the
    worker's peak RSS."""
    job = run.jobs[name]
    for position in sorted({position for position, _ in job.train_views}):
        sample = run.samples[position]
        if sample_identity(sample)["sha256"] != image_sha256[position]:
            return [("error", name, f"{sample.image_path}: this node reads other bytes than the driver "
                                    f"(the dataset must be at the same path on every node)")], "", peak_rss()
    device = (run.device[0], _device_id(*run.device))
    with tempfile.TemporaryDirectory(prefix=f"{name}-logs-") as logs:
        local = dataclasses.replace(run, log_root=logs, scratch_root=None, device=device)
        prepare_worker(local, threads)
        messages, node = [], ray.get_runtime_context().get_node_id()

        def collect(kind, job, payload):   # a trained job records the node it ran on
            messages.append((kind, job, dataclasses.replace(payload, stats={**payload.stats, "node": node})
                             if kind == "done" else payload))

        weights = (run.meta["backbone_checkpoint_sha256"], run.seed)
        if weights not in _NETWORKS:
            _NETWORKS.clear()   # another run's networks
        run_jobs(local, [name], collect, _NETWORKS.setdefault(weights, {}))
        log_path = os.path.join(logs, f"{name}.log")
        text = open(log_path, encoding="utf-8").read() if os.path.isfile(log_path) else ""
    return messages, text, peak_rss()


class RayRunner:
    """Jobs as Ray tasks (module docstring). ``address``: a running cluster ("auto", "HOST:PORT"); None starts
    Ray on this machine. ``resources``: custom resources every task asks for. ``runtime_env``: passed to
    ``ray.init`` (by default the project's folder on PYTHONPATH, where every node has it)."""

    def __init__(self, address=None, cpus_per_job=1, max_retries=2, resources=None, runtime_env=None):
        self.address, self.cpus_per_job, self.max_retries = address, cpus_per_job, max_retries
        self.resources = check_resources(resources)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.runtime_env = runtime_env if runtime_env is not None else {"env_vars": {"PYTHONPATH": root}}

    def run(self, run, needs, report, say):
        if not needs:
            return [peak_rss()]
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env=self.runtime_env)
        try:
            return self._run(run, needs, report, say)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, run, needs, report, say):
        say("Ray cluster: %s; %d jobs as tasks of %d CPU(s)%s each, up to %d retries of a lost worker",
            ray.cluster_resources(), len(needs), self.cpus_per_job,
            "".join(f" + {amount} {name}" for name, amount in (self.resources or {}).items()), self.max_retries)
        run_ref, sha256_ref = ray.put(run), ray.put(self.image_sha256(run))   # sent once, shared by every task
        pending = {train_remote.options(**task_options(need, run.device[0], self.cpus_per_job, self.max_retries,
                                                          self.resources))
                   .remote(run_ref, name, sha256_ref, self.cpus_per_job): name for name, need in needs.items()}
        peaks = [peak_rss()]

        def collect(name, result):
            messages, log_text, peak = result
            self._write_log(run.log_root, name, log_text)
            for kind, job, payload in messages:
                report(kind, job, payload)
            if peak is not None:
                peaks.append(peak)
            return any(kind != "done" for kind, _, _ in messages)   # a failed job ends the run

        def lost(name, cause):
            return [("crash", name, f"{name} failed on the cluster: {cause}")], "", None

        # after a failure or Ctrl-C the remaining tasks are cancelled: the finished banks stay for a resume
        collect_as_completed(pending, collect, lost, "jobs", "job", show_pending=True)
        return peaks

    @staticmethod
    def image_sha256(run):
        """The sha256 of each training image as the driver read it (for the fingerprints): every task checks its
        images against it."""
        return run.sample_sha256

    @staticmethod
    def _write_log(log_root, name, text):
        if text:
            os.makedirs(log_root, exist_ok=True)
            with open(os.path.join(log_root, f"{name}.log"), "w", encoding="utf-8") as f:
                f.write(text)
