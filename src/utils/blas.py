"""OpenBLAS kernels: a CPU-aware default, chosen before numpy and faiss load, and a start-up self-check.

numpy's OpenBLAS (0.3.23) and faiss-cpu's (0.3.15) pick their kernels from the CPU model when they load. On
CPUs newer than the build (e.g. Xeons with AMX) they fall back to the generic SSE3 "Prescott" kernels: 40
instead of ~190 GFLOP/s for the bank search. ``choose_coretype`` asks each library, in a short child process
(a library loaded here would keep its choice), which kernel it would take; if one would fall back to a
generic kernel on a CPU with AVX2 or AVX-512, it sets ``OPENBLAS_CORETYPE`` (SkylakeX or Haswell) for this
process and its children. A value already set is never changed: some machines set it because older builds
compute wrong results or crash on their processor. ``check_gemm`` then multiplies two small matrices with
numpy and searches them with faiss, compares with float64, and stops with one line naming the kernel and the
variable if either disagrees.

This module imports only the standard library at the top: ``src/__init__.py`` runs it before numpy loads.
"""
import glob
import importlib.util
import os
import subprocess
import sys

VARIABLE = "OPENBLAS_CORETYPE"
CHECKED = "PATCHCORE_OPENBLAS_CHECKED"   # set once decided, so that child processes do not probe again
# OpenBLAS core names that use no AVX2 kernels (what an unknown CPU falls back to)
GENERIC_CORES = frozenset({"prescott", "nehalem", "core2", "penryn", "dunnington", "atom", "katmai",
                           "coppermine", "northwood", "banias", "generic", "sandybridge", "barcelona"})
PACKAGE_LIBRARIES = {"numpy": "numpy.libs", "faiss": "faiss_cpu.libs"}
_PROBE = ("import ctypes, sys\n"
          "for path in sys.argv[1:]:\n"
          "    lib = ctypes.CDLL(path)\n"
          "    for name in ('openblas_get_corename64_', 'openblas_get_corename'):\n"
          "        if hasattr(lib, name):\n"
          "            f = getattr(lib, name); f.restype = ctypes.c_char_p; print(f().decode()); break\n"
          "    else:\n"
          "        print('unknown')\n")


def _cpuinfo_values(key, cpuinfo):
    """The value of every ``key`` line of ``cpuinfo``, one per processor (none where the file is missing)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return [line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key]
    except OSError:
        return []


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The first processor's flags (empty where /proc/cpuinfo is missing)."""
    values = _cpuinfo_values("flags", cpuinfo)
    return set(values[0].split()) if values else set()


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """'<model name> x <processors>' of this machine, for benchmark results ('unknown' without /proc/cpuinfo)."""
    names = _cpuinfo_values("model name", cpuinfo)
    return f"{names[0]} x {len(names)}" if names else "unknown"


def bundled_openblas():
    """Paths of the OpenBLAS libraries numpy and faiss bring, found without importing either."""
    paths = []
    for package, libs in PACKAGE_LIBRARIES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        site = os.path.dirname(list(spec.submodule_search_locations)[0])
        paths += sorted(glob.glob(os.path.join(site, libs, "libopenblas*.so*")))
    return paths


def probe_corenames(paths, timeout=20):
    """The core each library would choose, loaded in a child process with this environment."""
    if not paths:
        return []
    # their own dependencies (libgfortran, libgomp) sit beside them, found by the packages' loaders otherwise
    folders = sorted({os.path.dirname(path) for path in paths})
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(folders + [os.environ.get("LD_LIBRARY_PATH", "")]))
    result = subprocess.run([sys.executable, "-c", _PROBE, *paths], capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    names = result.stdout.split()
    return names if result.returncode == 0 and len(names) == len(paths) else ["unknown"] * len(paths)


def fallback_coretype(flags, corenames):
    """The OPENBLAS_CORETYPE to set, or None: only when a library would take a generic kernel on a CPU with
    AVX2 (Haswell kernels) or AVX-512 (SkylakeX kernels)."""
    if not any(name.lower() in GENERIC_CORES for name in corenames):
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def choose_coretype(environ=os.environ, flags=None, probe=probe_corenames, libraries=bundled_openblas):
    """Set ``OPENBLAS_CORETYPE`` in ``environ`` where the bundled OpenBLAS would run generic kernels on this
    CPU (module doc). Returns the value set, or None (already set, not needed, or decided by a parent)."""
    if VARIABLE in environ or environ.get(CHECKED):
        return None
    environ[CHECKED] = "1"
    flags = cpu_flags() if flags is None else flags
    if "avx2" not in flags:
        return None
    chosen = fallback_coretype(flags, probe(libraries()))
    if chosen is not None:
        environ[VARIABLE] = chosen
    return chosen


def kernels():
    """{library path: OpenBLAS core name} of the BLAS libraries loaded in this process (threadpoolctl)."""
    from threadpoolctl import threadpool_info
    return {info["filepath"]: info.get("architecture") for info in threadpool_info()
            if info.get("internal_api") == "openblas"}


def check_gemm(matmul=None, search=None, size=192, tolerance=1e-4):
    """Raise ``InputError`` when a float32 matrix product (numpy) or an exact nearest-neighbour search (faiss)
    differs from float64 by more than ``tolerance`` (relative to the result's scale). ``matmul`` and ``search``
    replace the real ones in tests."""
    import numpy as np
    from src.utils.errors import InputError
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 @ b64
    got = (matmul or np.matmul)(a, b)
    error = float(np.abs(got - want).max() / np.abs(want).max())
    # every row of a to its nearest row of b, squared, in float64 (|x|^2 + |y|^2 - 2 x.y)
    distances = ((a64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None, :] - 2 * a64 @ b64.T).min(1)
    found = (search or _faiss_nearest)(a, b)
    error_knn = float(np.abs(found - distances).max() / distances.max())
    for what, value in (("a float32 matrix product (numpy)", error), ("a nearest-neighbour search (faiss)",
                                                                     error_knn)):
        if not value <= tolerance:
            names = ", ".join(f"{os.path.basename(path)}: {name}" for path, name in kernels().items())
            raise InputError("OpenBLAS", f"{what} differs from float64 by {value:.2g} (kernels {names}; "
                                         f"{VARIABLE}={os.environ.get(VARIABLE, 'unset')}): set {VARIABLE} to "
                                         f"another kernel (e.g. Haswell) or unset it")


def _faiss_nearest(queries, bank):
    import faiss
    import numpy as np
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    return index.search(queries, 1)[0][:, 0].astype(np.float64)
