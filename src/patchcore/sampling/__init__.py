"""Memory-bank samplers: ``build_sampler(name, percentage, seed)`` -> a ``BaseSampler``."""
from src.utils.errors import InputError
from src.patchcore.sampling.kcenter_greedy import ApproximateGreedyCoresetSampler, estimate_peak_bytes
from src.patchcore.sampling.sampling_def import BaseSampler, IdentitySampler, RandomSampler

SAMPLER_NAMES = ("identity", "random", "approx_greedy_coreset")


def build_sampler(name, percentage, seed=0, progress=None):
    """The sampler called ``name`` (one of ``SAMPLER_NAMES``)."""
    if name == "identity":
        return IdentitySampler()
    if name == "random":
        return RandomSampler(percentage, seed)
    if name == "approx_greedy_coreset":
        return ApproximateGreedyCoresetSampler(percentage, seed, progress=progress)
    raise InputError("sampler", f"unknown sampler '{name}' (choose one of {', '.join(SAMPLER_NAMES)})")


__all__ = ["ApproximateGreedyCoresetSampler", "BaseSampler", "IdentitySampler", "RandomSampler", "SAMPLER_NAMES",
           "build_sampler", "estimate_peak_bytes"]
