"""Benchmarks, run from the repository root as ``python -m benchmarks.NAME``, and the torch reference architectures
(``benchmarks.torch_reference``) that they and the parity tests share.

Imports nothing: peers_anomalib.py runs in anomalib's venv, where neither ``src`` nor mindspore may be loaded.
"""
