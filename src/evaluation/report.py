"""Result tables with a mean row, from eval/metrics.json files.

python -m src.evaluation.report OUTPUT_DIR CATEGORY [CATEGORY ...]
    per-category table + mean; writes OUTPUT_DIR/results.md and OUTPUT_DIR/results.json
python -m src.evaluation.report --compare LABEL=METRICS_JSON [LABEL=METRICS_JSON ...] [--json OUT]
    one row per labelled run (e.g. pretrained vs random features), side by side
"""
import argparse
import json
import os
import sys

import src  # noqa: F401
from src.utils.io import write_json, write_text
from src.evaluation.metrics import METRIC_KEYS, OPERATING_KEYS, format_table, mean_row

# The operating points (n/a with too few test images of a class) and the worst defect type's margin.
COLUMNS = ["clsname", *METRIC_KEYS, *OPERATING_KEYS, "worst_margin"]
# The decisions at each model's threshold, shown beside the rankings when the rows have them; the review band's
# figures when some row's model has one.
DECISION_COLUMNS = ["image_recall", "image_fpr", "pixel_f1_at_threshold"]
BAND_COLUMNS = ["review_share", "wrong_outside_review"]


def read_row(label, metrics_path):
    with open(metrics_path, "r", encoding="utf-8") as f:
        metrics = json.load(f)
    metrics = metrics.get("metrics", metrics)  # postprocess.py's acc_<CATEGORY>.json nests them
    return dict(clsname=label, **{k: metrics.get(k) for k in COLUMNS[1:] + DECISION_COLUMNS + BAND_COLUMNS},
                review_threshold=metrics.get("review_threshold"))


def columns_of(rows):
    """COLUMNS, then the decision columns some row has a value for (the band's when some row has a band)."""
    band = BAND_COLUMNS if any(row.get("review_threshold") is not None for row in rows) else []
    return COLUMNS + [key for key in DECISION_COLUMNS + band if any(row.get(key) is not None for row in rows)]


def per_category(output_dir, categories):
    rows, missing = [], []
    for category in categories:
        path = os.path.join(output_dir, category, "eval", "metrics.json")
        if os.path.isfile(path):
            rows.append(read_row(category, path))
        else:
            missing.append(category)
    if not rows:
        print(f"error: {output_dir}: no eval/metrics.json for any of {', '.join(categories)}", file=sys.stderr)
        return 2
    columns = columns_of(rows)
    mean = mean_row(rows, columns)
    table = format_table(rows + [mean], columns)
    write_text(os.path.join(output_dir, "results.md"), table + "\n")
    write_json(os.path.join(output_dir, "results.json"), {"categories": rows, "mean": mean, "missing": missing})
    print(table)
    if missing:
        print(f"missing (failed or not run): {', '.join(missing)}", file=sys.stderr)
    return 0


def compare(pairs, json_path):
    rows = []
    for pair in pairs:
        label, _, path = pair.partition("=")
        if not os.path.isfile(path):
            print(f"error: {path}: metrics file not found", file=sys.stderr)
            return 2
        rows.append(read_row(label, path))
    print(format_table(rows, columns_of(rows)))
    if json_path:
        write_json(json_path, rows)
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="+", metavar="LABEL=METRICS_JSON")
    parser.add_argument("--json", help="with --compare: also write the rows here")
    parser.add_argument("positional", nargs="*", metavar="OUTPUT_DIR CATEGORY")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.json)
    if len(args.positional) < 2:
        parser.error("give OUTPUT_DIR and at least one CATEGORY, or --compare")
    return per_category(args.positional[0], args.positional[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
