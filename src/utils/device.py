"""The MindSpore device every entry point and worker process runs on."""


def set_device(device_target, device_id):
    """Graph mode on ``device_target`` (CPU, GPU, Ascend) ``device_id``."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device_target, device_id)
    except RuntimeError:
        # The runtime is already up (a Python API caller ran MindSpore first): fine if it is the same device.
        if ms.get_context("device_target") != device_target:
            raise
