"""OpenBLAS kernel choice and the start-up GEMM self-check (src/utils/blas.py); faiss's threads (device.py)."""
import os
import subprocess
import sys
from pathlib import Path

import faiss  # noqa: F401  (its OpenBLAS loaded, for kernels())
import numpy as np
import pytest

import src  # noqa: F401
from src.app import cli
from src.utils import blas
from src.utils.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
AVX512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}


def never(*_):
    raise AssertionError("probed although the choice was already made")


def test_a_value_already_set_is_left_as_it_is():
    environ = {"OPENBLAS_CORETYPE": "Prescott"}   # e.g. a machine where newer kernels crash
    assert blas.choose_coretype(environ, AVX512, probe=never, libraries=lambda: ["x.so"]) is None
    assert environ == {"OPENBLAS_CORETYPE": "Prescott"}
    decided = {blas.CHECKED: "1"}   # a child of a process that decided already
    assert blas.choose_coretype(decided, AVX512, probe=never) is None and blas.VARIABLE not in decided


@pytest.mark.parametrize("flags, corenames, expected", [
    (AVX512, ["Prescott", "Zen"], "SkylakeX"),     # one library would fall back: both get a real kernel
    ({"avx2", "fma"}, ["Nehalem"], "Haswell"),
    (AVX512, ["Cooperlake", "Zen"], None),         # detected correctly: nothing to do
    (AVX512, ["SkylakeX", "SkylakeX"], None),
    ({"sse3", "ssse3"}, ["Prescott"], None),        # a CPU without AVX2: the generic kernel is the right one
])
def test_a_generic_kernel_on_an_avx2_or_avx512_cpu_is_replaced(flags, corenames, expected):
    environ = {}
    probe = (lambda paths: corenames) if "avx2" in flags else never
    assert blas.choose_coretype(environ, flags, probe=probe, libraries=lambda: ["a.so", "b.so"]) == expected
    assert environ.get(blas.VARIABLE) == expected and environ[blas.CHECKED] == "1"


def test_the_probe_names_the_kernel_of_each_bundled_library():
    paths = blas.bundled_openblas()
    assert any("numpy.libs" in p for p in paths) and any("faiss_cpu.libs" in p for p in paths)
    names = blas.probe_corenames(paths)
    assert len(names) == len(paths) and "unknown" not in names
    # the process's own libraries run the kernel the probe saw (this process loaded them after the choice)
    loaded = {name.lower() for name in blas.kernels().values()}
    assert {name.lower() for name in names} <= loaded


def test_the_self_check_passes_on_this_machine_and_refuses_a_wrong_result():
    blas.check_gemm()
    with pytest.raises(InputError, match="matrix product .*OPENBLAS_CORETYPE"):
        blas.check_gemm(matmul=lambda a, b: (a @ b) * np.float32(1.01))
    with pytest.raises(InputError, match="nearest-neighbour search .*OPENBLAS_CORETYPE"):
        blas.check_gemm(search=lambda queries, bank: np.zeros(len(queries)))


def test_every_entry_point_stops_with_one_line_when_the_check_fails(monkeypatch, capsys):
    monkeypatch.setattr(cli, "check_gemm", lambda: blas.check_gemm(matmul=lambda a, b: a @ b + 1))
    ran = []
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda: ran.append(1))
    assert stop.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert err.startswith("error: OpenBLAS: a float32 matrix product (numpy) differs") and err.count("\n") == 1


@pytest.mark.parametrize("threads", [None, 1])
def test_faiss_searches_on_every_cpu_even_when_mindspore_loaded_first(threads):
    # set_device gives faiss the threads asked for (default: every CPU)
    code = ("import os, src, mindspore, faiss\n"
            "from src.utils.device import set_device\n"
            f"set_device('CPU', 0, threads={threads})\n"
            "print(faiss.omp_get_max_threads(), len(os.sched_getaffinity(0)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    got, cpus = map(int, result.stdout.split()[-2:])
    assert got == (threads or cpus)


def test_faiss_searches_on_every_cpu_for_an_api_caller_without_set_device():
    # Model.load imports MindSpore before the caller first touches faiss: ``import src`` has loaded faiss already,
    # so faiss keeps its own OpenMP runtime at every CPU
    code = ("import os, src\n"
            "from src.inference.model import Model\n"
            "import mindspore, faiss\n"
            "print(faiss.omp_get_max_threads(), len(os.sched_getaffinity(0)))\n")
    # env: os.environ as Python sees it; MindSpore, once imported by another test here, setenv()s
    # OMP_NUM_THREADS=1 behind Python's back, and a child inheriting that would rightly use one thread
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    got, cpus = map(int, result.stdout.split()[-2:])
    assert got == cpus


def test_cpu_name_counts_the_processors_and_says_unknown_without_cpuinfo(tmp_path):
    from src.utils.blas import cpu_name
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2\n")
    assert cpu_name(str(cpuinfo)) == "AMD EPYC 9R14 x 2"
    assert cpu_name(str(tmp_path / "missing")) == "unknown"


def test_cpu_flags_are_the_first_processors_and_empty_without_cpuinfo(tmp_path):
    from src.utils.blas import cpu_flags
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\nvmx flags\t: ept\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
