"""The MindSpore device every entry point and worker process runs on, and the threads faiss searches with."""
import os


def set_device(device_target, device_id, threads=None):
    """Graph mode on ``device_target`` (CPU, GPU, Ascend) ``device_id``; faiss's OpenMP on ``threads`` threads
    (default: every CPU this process may use).

    Why the threads: once MindSpore is loaded before faiss, faiss's OpenMP calls bind to the libgomp MindSpore
    brought, which MindSpore leaves at one thread, so every bank search ran on one core (a 2048x2048 image's
    scoring: 2.8 s instead of 1.8 s on 2 cores).
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
