"""PatchCore for MindSpore: high-resolution industrial anomaly detection.

Importing this package sets, before ``mindspore``, ``numpy`` or ``faiss`` is first imported (which is why every
entry point imports ``src`` first), and only where the user has not chosen a value:
- ``ONEDNN_MAX_CPU_ISA=AVX2``: on AVX-512 CPUs MindSpore's bundled oneDNN otherwise takes a path about 100x
  slower for 3x3 convolutions;
- ``OPENBLAS_CORETYPE`` where the bundled OpenBLAS would fall back to generic SSE3 kernels on an AVX2 or
  AVX-512 CPU (``src/utils/blas.py``; ~5x slower bank search).

It then imports ``faiss``, so that faiss binds its own OpenMP runtime: loaded after ``mindspore``, faiss's
OpenMP calls go to the libgomp MindSpore brought, which stays at one thread, and every bank search of a Python
API caller (``Model.load`` then ``predict``, no ``set_device``) ran on one core (2048x2048 image: 2.7 s of
scoring instead of 1.7 s on 2 cores).
"""
import os

from src.utils.blas import choose_coretype

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
choose_coretype()

import faiss  # noqa: E402,F401  (before mindspore: see above)
