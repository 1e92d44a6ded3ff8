"""Memory-bank samplers, chosen by name: ``build_sampler(spec, percentage, seed)`` -> a ``BaseSampler``.

``spec`` is the config's ``sampler`` entry: a name, or a mapping with ``name`` and the sampler's options
(``approx_greedy_coreset``: ``two_round_above``, ``chunk_size``, ``oversample``).
"""
from src.utils.registry import Registry
from src.patchcore.sampling.coreset_sampler import ApproximateGreedyCoresetSampler
from src.patchcore.sampling.kcenter_greedy import estimate_peak_bytes
from src.patchcore.sampling.sampling_def import BaseSampler, IdentitySampler, Projection, RandomSampler

SAMPLERS = Registry("sampler", "sampler", {cls.name: cls for cls in (IdentitySampler, RandomSampler,
                                                                    ApproximateGreedyCoresetSampler)})


def sampler_options(spec):
    """``spec`` (a name or a mapping with ``name``) as a mapping, without checking it."""
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def build_sampler(spec, percentage, seed=0):
    """The sampler ``spec`` names, with its options (module doc)."""
    options = sampler_options(spec)
    name = options.pop("name", None)
    return SAMPLERS.build(name, percentage, seed, **options)


__all__ = ["ApproximateGreedyCoresetSampler", "BaseSampler", "IdentitySampler", "Projection", "RandomSampler",
           "build_sampler", "estimate_peak_bytes", "sampler_options"]
