"""Evaluate a trained category: anomaly maps and scores for test images, then the five metrics.

Writes <output_dir>/<category>/eval/: metrics.json, scores.json, metrics.md, results.json, results.md, eval.log,
vis/*.png (see src/app/evaluate.py).
"""
import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli


def main():
    args = cli.base_parser(__doc__.splitlines()[0]).parse_args()
    from src.app.evaluate import evaluate
    return evaluate(args)


if __name__ == "__main__":
    cli.run(main)
