"""Training on a Ray cluster (src/training/ray_runner.py): a local cluster of a head (no CPU) and two one-CPU worker
nodes with one ``bank_slot`` each, on 127.0.0.1 (no dashboard, 200 MB object stores), started here and always shut
down. The jobs ask for a ``bank_slot`` (``runner.resources``): one job per node at a time, on both nodes.

The banks trained as Ray tasks equal, byte for byte, those of a local run, and both nodes trained some (model.json
records each job's node); every job's log reaches the log folder; a resume sends nothing to the cluster; a
truncated image ends the next run with a one-line error (exit 2) and the banks stay; a worker killed mid-job is retried and the banks are still the same; Ctrl-C
on the driver ends the run and its tasks; a job that fails on a node ends the run with its one-line error, and
the finished banks stay. Without --backend ray nothing imports Ray (tests/unit/test_architecture.py does not cover
that: a subprocess checks sys.modules)."""
import os
import signal
import subprocess
import sys
import time

import pytest

# Every node of the test cluster on 127.0.0.1: Ray then neither binds to nor looks for this machine's outward
# address (read when Ray is imported; train.py's subprocesses inherit it).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray  # noqa: E402  (installed for the tests by scripts/setup_env.sh --test: requirements-distributed.txt)

import src  # noqa: E402,F401
from conftest import (ROOT, assert_one_line_error, bank_digests, python_command, read_json,  # noqa: E402
                      run_cli)

CATEGORY = "synthetic_leather"
SMALL = ["--config", os.path.join(ROOT, "configs", "hr_patchcore.yaml"), "-o", "hr.patch_size=256",
         "-o", "percentage=0.1", "-o", "hr.task_generator=o2o", "-o", "hr.thumbnail={thumbnail_size: 128}",
         "-o", "hr.val_config={anomaly_syn_fn: [RandomBox], val_sample_ratio: 0.25}"]
JOBS = [f"task_{k}" for k in range(4)] + ["thumbnail"]
ON_SLOTS = ["-o", "runner.resources={bank_slot: 1}"]


def common(dataset, out):
    return ["--dataset_path", str(dataset), "--category", CATEGORY, "--output_dir", str(out), "--seed", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from src.data.synthetic import generate_category
    root = tmp_path_factory.mktemp("data")
    generate_category(str(root), category=CATEGORY, texture="leather", image_size=(512, 512), n_train=12,
                      n_test_good=1, n_test_defect_per_type=1, defect_types=("stain",), seed=0)
    return root


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    node = dict(object_store_memory=200 * 2 ** 20)
    started = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False, **node))
    try:
        for _ in range(2):
            started.add_node(num_cpus=1, resources={"bank_slot": 1}, **node)
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()


@pytest.fixture(scope="module")
def local_banks(dataset, tmp_path_factory):
    """The banks of the same training on this machine, one worker: in this process, on every core, where each Ray
    task has one (512² images: validation searches large enough that BLAS splits them across threads)."""
    out = tmp_path_factory.mktemp("local")
    local = run_cli("train.py", *common(dataset, out), *SMALL, "--workers", "1")
    assert local.returncode == 0, local.stderr
    return bank_digests(out / CATEGORY, JOBS)


def running_jobs():
    """Processes of Ray workers running a training job (Ray titles them after the task)."""
    import psutil
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "ray::train_remote" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def start_training(dataset, out, cluster):
    return subprocess.Popen(python_command("train.py", *common(dataset, out), *SMALL, "--backend", "ray",
                                           "--ray_address", cluster.address),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_a_running_job(process, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        jobs = running_jobs()
        if jobs:
            return jobs[0]
        time.sleep(0.05)
    return None


def test_banks_trained_on_both_nodes_equal_a_local_run_a_resume_sends_nothing_and_a_bad_image_keeps_them(
        dataset, cluster, local_banks, tmp_path):
    import shutil
    remote = run_cli("train.py", *common(dataset, tmp_path / "ray"), *SMALL, *ON_SLOTS, "--backend", "ray",
                     "--ray_address", cluster.address)
    assert remote.returncode == 0, remote.stderr
    assert "Ray cluster:" in remote.stdout and "5 jobs as tasks of 1 CPU(s) + 1 bank_slot each" in remote.stdout
    assert bank_digests(tmp_path / "ray" / CATEGORY, JOBS) == local_banks
    nodes = {job: stats["node"] for job, stats in read_json(tmp_path / "ray" / CATEGORY / "model.json")["jobs"].items()}
    assert set(nodes.values()) == {node.node_id for node in cluster.worker_nodes}, nodes
    for job in JOBS:   # each job's log came back from its node, and train.log says where it ran
        assert "features: image" in (tmp_path / "ray" / CATEGORY / "logs" / f"{job}.log").read_text(), job
        assert f"{job} done on node {nodes[job]}" in remote.stdout
    again = run_cli("train.py", *common(dataset, tmp_path / "ray"), *SMALL, *ON_SLOTS, "--backend", "ray",
                    "--ray_address", cluster.address)
    assert again.returncode == 0, again.stderr
    assert "Resuming: 5 of 5 banks are complete and verified" in again.stdout and "Ray cluster:" not in again.stdout
    assert bank_digests(tmp_path / "ray" / CATEGORY, JOBS) == local_banks

    # the same training images, one of them truncated: found before any task is sent; the banks stay
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    victim = data / CATEGORY / "train" / "good" / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    bad = run_cli("train.py", *common(data, tmp_path / "ray"), *SMALL, *ON_SLOTS, "--backend", "ray",
                  "--ray_address", cluster.address)
    assert_one_line_error(bad, str(victim))
    assert "Ray cluster:" not in bad.stdout
    assert bank_digests(tmp_path / "ray" / CATEGORY, JOBS) == local_banks


def test_a_worker_killed_mid_job_is_retried_and_the_banks_equal_an_uninterrupted_run(dataset, cluster, local_banks,
                                                                                      tmp_path):
    process = start_training(dataset, tmp_path, cluster)
    try:
        victim = wait_for_a_running_job(process)
        assert victim is not None, "no job started within 120 s"
        victim.kill()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert bank_digests(tmp_path / CATEGORY, JOBS) == local_banks


def test_ctrl_c_on_the_driver_cancels_the_remaining_jobs_and_keeps_what_finished(dataset, cluster, tmp_path):
    process = start_training(dataset, tmp_path, cluster)
    try:
        assert wait_for_a_running_job(process) is not None, "no job started within 120 s"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    # With Ray loaded the interrupted driver ends through Ray's own exit handling (exit code 1, a "SIGTERM received"
    # report, not cli.run's 130); the tasks it owned are cancelled.
    assert process.returncode != 0, stderr[-1500:]
    assert not (tmp_path / CATEGORY / "model.json").exists()
    deadline = time.monotonic() + 60
    while running_jobs() and time.monotonic() < deadline:   # cancelled tasks end with their workers
        time.sleep(0.2)
    assert not running_jobs()


def test_a_node_that_reads_other_image_bytes_fails_its_job_with_one_line_and_finished_banks_stay(
        dataset, cluster, tmp_path):
    from src.data.sample import HRSample
    from src.tiling.plan import MultiResolutionHRImageSpliter
    from src.tiling.tasks import O2OTaskGenerator
    from src.training import ray_runner
    from src.training.hiad import HRTrainer
    from src.utils.errors import InputError
    train = [HRSample(str(p), image_size=512) for p in sorted((dataset / CATEGORY / "train" / "good").iterdir())]
    plan = MultiResolutionHRImageSpliter(512, 256)
    bad = str(train[-1].image_path)

    class OtherBytesOnTheNodes(ray_runner.RayRunner):
        """What the driver read of the last image is not what the nodes read."""
        def image_sha256(self, run):
            return [("0" * 64 if str(sample.image_path) == bad else sha)
                    for sample, sha in zip(run.samples, super().image_sha256(run))]

    folder = tmp_path / "model"
    trainer = HRTrainer(batch_size=4, tasks=O2OTaskGenerator().create_tasks(train, plan),
                        config={"patch": {"backbone_name": "mobilenet_v2",
                                          "layers_to_extract_from": ["features.6", "features.13"],
                                          "percentage": 0.1, "pretrain_embed_dimension": 64,
                                          "target_embed_dimension": 64}},
                        checkpoint_root=str(folder), log_root=str(tmp_path / "logs"), vis_root=None)
    with pytest.raises(InputError) as raised:
        trainer.train(train, runner=OtherBytesOnTheNodes(address=cluster.address))
    message = str(raised.value)
    assert bad in message and "other bytes" in message and "\n" not in message
    assert not (folder / "model.json").exists()
    assert not ray.is_initialized()   # the runner disconnected the driver it connected


def test_run_all_mvtec_with_ray_gives_the_serial_runs_results(cluster, tmp_path):
    """scripts/run_all_mvtec.sh with BACKEND=ray: each of 3 generated categories one task (one CPU, so on both
    worker nodes); the table and results.json equal the serial run's."""
    from src.data.synthetic import generate_category
    data = tmp_path / "mvtec"
    for category, texture in (("bottle", "fabric"), ("cable", "wood"), ("carpet", "leather")):
        generate_category(str(data), category=category, texture=texture, image_size=(128, 128), n_train=4,
                          n_test_good=2, n_test_defect_per_type=1, defect_types=("stain", "scratch"), seed=0)
    config = os.path.join(ROOT, "configs", "mobilenet_v2.yaml")
    script = os.path.join(ROOT, "scripts", "run_all_mvtec.sh")
    runs = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        result = subprocess.run(["bash", script, "--config", config, str(data), "none", "0", str(out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, BACKEND=backend, RAY_ADDRESS=cluster.address))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[backend] = (result.stdout, read_json(out / "results.json"))
    (serial_out, serial), (ray_out, remote) = runs["local"], runs["ray"]
    assert [row["clsname"] for row in remote["categories"]] == ["bottle", "cable", "carpet"]
    assert remote == serial
    assert (tmp_path / "ray" / "results.md").read_text() == (tmp_path / "local" / "results.md").read_text()
    assert "3 categories as tasks of 1 CPU(s)" in ray_out and "Ray cluster:" not in serial_out
    nodes = {line.split("(node ")[1].rstrip(")") for line in ray_out.splitlines() if line.startswith("=== ")}
    assert nodes == {node.node_id for node in cluster.worker_nodes}


def test_without_the_ray_backend_nothing_imports_ray():
    code = ("import sys, src\nfrom src.training.backends import build_runner\nfrom src.training import trainer\n"
            "build_runner('local')\nimport src.app.train\nprint('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
