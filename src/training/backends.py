"""Where training jobs run, by name (``runner.backend``): the registry a command line offers its choices from.

Importing it costs nothing: each backend's module (MindSpore's runner, Ray) is imported only when that backend is
built.
"""
from src.utils.registry import Registry


def _local_runner(**options):
    from src.training.runner import LocalRunner
    return LocalRunner(**options)


def _ray_runner(**options):
    from src.training.ray_runner import RayRunner
    return RayRunner(**options)


RUNNERS = Registry("runner.backend", "backend", {"local": _local_runner, "ray": _ray_runner})


def build_runner(backend="local", **options):
    """The runner registered as ``backend``, made with ``options`` (e.g. ``workers`` for ``local``)."""
    return RUNNERS.build(backend, **options)
