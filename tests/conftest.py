"""Fixtures and helpers shared by several test files (tests/unit and tests/integration).

The helpers are plain functions: ``from conftest import ROOT, run_cli, ...`` (pytest puts tests/ on sys.path
when it loads this file, and pytest.ini lists it in ``pythonpath`` too). Heavy packages (mindspore, numpy,
src.*) are imported inside the functions that need them, so that loading this file stays cheap.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER_DIR = ROOT / "ascend310_infer"


# ------------------------------------------------------------------------------------------ markers


def pytest_collection_modifyitems(config, items):
    """``slow`` for every end-to-end test (tests/integration), ``cpp`` for those that need the C++ runner built
    (the ``runner`` fixture, directly or through another fixture), ``ray`` for those on a local Ray cluster (the
    ``cluster`` fixture of test_ray.py); ``browser`` is set on the test that drives the page."""
    integration = Path(__file__).resolve().parent / "integration"
    for item in items:
        if integration in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)
        if "runner" in item.fixturenames:
            item.add_marker(pytest.mark.cpp)
        if "cluster" in item.fixturenames:
            item.add_marker(pytest.mark.ray)


# ------------------------------------------------------------------------------------------ subprocesses


def run_cli(script, *args, **kwargs):
    """``python <ROOT>/<script> args...`` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kwargs)


def python_command(script, *args):
    """The argument list of ``python <ROOT>/<script> args...`` (arguments as strings)."""
    return [sys.executable, str(ROOT / script), *map(str, args)]


def run_command(command, **env):
    """A command (program and arguments, str or paths) from the repository root; ``env`` is added to the
    environment, with PYTHON set to this interpreter (the shell scripts run it)."""
    return subprocess.run(list(map(str, command)), capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, PYTHON=sys.executable, **env))


# ------------------------------------------------------------------------------------------ command results


def one_error_line(result):
    """The single stderr line starting with ``error:`` of a command that exited with status 2."""
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def assert_one_line_error(result, needle):
    """Exit status 2 and a single ``error:`` line on stderr, which contains ``needle``."""
    assert needle in one_error_line(result), result.stderr


def error_lines(result):
    """The stderr lines containing ``error:`` anywhere (also when a program prefixes its messages)."""
    return [line for line in result.stderr.strip().splitlines() if "error:" in line]


# ------------------------------------------------------------------------------------------ services


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a database on a throwaway PostgreSQL cluster (Debian's server: scripts/setup_postgres.sh),
    initialised and started as the ``postgres`` user in a temporary folder on a free 127.0.0.1 port, stopped and
    removed in a ``finally``. The server refuses to run as root, hence runuser; pytest's own temporary folders are
    private to root, hence a folder of its own."""
    import glob
    import shutil
    import tempfile
    from src.app.serve import free_port
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    assert binaries, "no PostgreSQL server: bash scripts/setup_postgres.sh"
    binary = binaries[-1]
    folder = Path(tempfile.mkdtemp(prefix="patchcore-postgres-"))
    data = folder / "data"
    shutil.chown(folder, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    port = free_port()
    subprocess.run([*as_postgres, f"{binary}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run([*as_postgres, f"{binary}/pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
    try:
        subprocess.run([*as_postgres, f"{binary}/createdb", "-h", "127.0.0.1", "-p", str(port), "records"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/records"
    finally:
        subprocess.run([*as_postgres, f"{binary}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request):
    """None (a records store's own SQLite file) or a new database on the test PostgreSQL cluster: a test that takes
    it runs on both."""
    return None if request.param == "sqlite" else new_database(request.getfixturevalue("postgres_url"))


def chromium(profile, width=1200, height=900):
    """Headless Debian Chromium (scripts/setup_browser.sh) through ChromeDriver, with a profile folder of its own;
    the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def new_database(cluster_url):
    """The URL of a new, empty database on the cluster of ``cluster_url`` (the postgres_url fixture's)."""
    import uuid
    from sqlalchemy import create_engine, text
    name = f"test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(cluster_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return cluster_url.rsplit("/", 1)[0] + "/" + name


# ------------------------------------------------------------------------------------------ files


def noise_image(seed, height=48, width=80):
    """A seeded HxWx3 uint8 image of uniform noise."""
    import numpy as np
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png(path, rgb):
    """An RGB array written as a PNG file."""
    import cv2
    import numpy as np
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def changed_pixels(before, after):
    """[H, W] bool: the pixels where two images differ in any channel."""
    import numpy as np
    return np.any(before != after, axis=-1)


def just_above(value):
    """The float32 right above ``value`` (where a max-F1 threshold lands above a score), as a float."""
    import numpy as np
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def small_category(root, n_train, category="synthetic_leather"):
    """A generated 72x72 leather category under ``root`` (3 good and 2 + 2 defective test images); ``root``."""
    from src.data.synthetic import generate_category
    generate_category(str(root), category=category, texture="leather", image_size=(72, 72), n_train=n_train,
                      n_test_good=3, n_test_defect_per_type=2, defect_types=("scratch", "stain"), seed=0)
    return root


# A 224-pixel model at 64 pixels: fast enough for end-to-end tests.
SMALL_PLAIN = ["-o", "resize=72", "-o", "imagesize=64", "-o", "batch_size=4", "-o", "percentage=0.25"]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A generated category with 12 training images (enough for 10 validation images); shared by every test file
    that uses it: none writes into it (they copy what they alter)."""
    return small_category(tmp_path_factory.mktemp("data"), n_train=12)


def train_small(dataset, out, category="synthetic_leather"):
    """train.py with SMALL_PLAIN on ``dataset`` into ``out`` (seed 0); its CompletedProcess, asserted successful."""
    result = run_cli("train.py", "--dataset_path", str(dataset), "--category", category, "--output_dir", str(out),
                     "--seed", "0", *SMALL_PLAIN)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def small_model(small_dataset, tmp_path_factory):
    """(model folder, train.py's CompletedProcess) of SMALL_PLAIN trained on ``small_dataset``, trained once for the
    session (tests copy the folder before they alter it)."""
    out = tmp_path_factory.mktemp("out")
    return out / "synthetic_leather", train_small(small_dataset, out)


def digest(path):
    """sha256 hex digest of a file."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def folder_digests(folder):
    """sha256 of every file below ``folder`` (hidden ones too), by path relative to it."""
    digests = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            digests[os.path.relpath(path, folder)] = digest(path)
    return digests


def bank_digests(folder, jobs):
    """sha256 of every file of each job's bank folder (index, bank.json, validation scores), by "job/file"."""
    return {f"{job}/{name}": digest(os.path.join(folder, job, name)) for job in jobs
            for name in ("faiss.index", "bank.json", "validation.npz")}


def read_json(path):
    return json.loads(Path(path).read_text())


def read_rgb(path):
    """An image file as RGB (any bit depth), as cv2 reads it unchanged."""
    import cv2
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


def leftovers(folder):
    """Names of staging folders (``.partial-``, ``.old-``) left in ``folder``."""
    return [name for name in os.listdir(folder) if ".partial-" in name or ".old-" in name]


# ------------------------------------------------------------------------------------------ backbones


@contextlib.contextmanager
def context_mode(mode):
    """MindSpore's execution mode set to ``mode`` for the block."""
    import mindspore as ms
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def assert_parity(net, torch_taps, layers, image):
    """In PyNative and graph mode, every requested output matches torch to 1e-4 of its largest value."""
    import mindspore as ms
    import numpy as np
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        with context_mode(mode):
            outputs = net(ms.Tensor(image))
        assert len(outputs) == len(layers)
        for layer, output in zip(layers, outputs):
            expected = torch_taps[layer].numpy()
            actual = output.asnumpy()
            assert actual.shape == expected.shape, layer
            scale = float(np.abs(expected).max())
            assert scale > 0
            assert float(np.abs(actual - expected).max()) <= 1e-4 * scale, (layer, mode)


# ------------------------------------------------------------------------------------------ torch checkpoints


def os_system_pickle(marker):
    """Protocol-0 pickle that would run ``touch marker`` if any unpickler resolved ``os.system``."""
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


def write_zip_checkpoint(path, data_pkl, storages=None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)


def random_state_dict(backbone_name, layers, seed):
    """numpy {torch key: array} for the backbone, BatchNorm statistics included, plus torch-only extras."""
    import numpy as np
    from src.backbones.networks import parameter_shapes
    from src.backbones.torch_checkpoint import torch_name
    rng = np.random.default_rng(seed)
    state = {torch_name(name): rng.standard_normal(shape).astype(np.float32)
             for name, shape in parameter_shapes(backbone_name, layers).items()}
    state["features.0.1.num_batches_tracked"] = np.array(9, np.int64)
    state["classifier.1.weight"] = rng.standard_normal((10, 1280)).astype(np.float32)
    return state


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def runner():
    """Path of a freshly (re)built ascend310_infer/build/patchcore_infer binary.

    The first build on a machine downloads the MindSpore Lite 2.0.0 wheel (~170 MB) from PyPI.
    """
    env = dict(os.environ, PYTHON=sys.executable)
    (RUNNER_DIR / "build").mkdir(exist_ok=True)
    # one build at a time: the test processes (pytest-xdist workers) share the build folder; the second finds the
    # binary up to date
    with open(RUNNER_DIR / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(RUNNER_DIR / "build.sh")], env=env, capture_output=True, text=True,
                                timeout=1800)
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    binary = RUNNER_DIR / "build" / "patchcore_infer"
    assert binary.is_file()
    return binary
