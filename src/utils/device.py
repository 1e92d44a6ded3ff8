"""The MindSpore device every entry point and worker process runs on, and the threads faiss searches with."""
import contextlib
import os


def set_device(device_target, device_id, threads=None, seed=None):
    """Graph mode on ``device_target`` (CPU, GPU, Ascend) ``device_id``; faiss's OpenMP on ``threads`` threads
    (default: every CPU this process may use); MindSpore's global ``seed`` when given.

    Entry points and workers state their threads here; ``import src`` already loads faiss before MindSpore, so
    that faiss keeps its own OpenMP runtime (see ``src/__init__.py``).
    """
    import faiss
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device_target, device_id)
    except RuntimeError:
        # The runtime is already up (a Python API caller ran MindSpore first): fine if it is the same device.
        if ms.get_context("device_target") != device_target:
            raise
    faiss.omp_set_num_threads(threads or len(os.sched_getaffinity(0)))
    if seed is not None:
        ms.set_seed(seed)


@contextlib.contextmanager
def faiss_threads(count):
    """faiss's OpenMP, and the BLAS it calls, on ``count`` threads during the block."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
