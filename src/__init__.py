"""PatchCore for MindSpore: high-resolution industrial anomaly detection.

Importing this package sets ``ONEDNN_MAX_CPU_ISA=AVX2`` unless the user chose a value:
on AVX-512 CPUs MindSpore's bundled oneDNN otherwise takes a path about 100x slower for
3x3 convolutions. It must happen before ``mindspore`` is first imported, which is why
every entry point imports ``src`` first.
"""
import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
