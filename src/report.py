"""Per-category results table with a mean row, from <output_dir>/<category>/eval/metrics.json files.

python -m src.report OUTPUT_DIR CATEGORY [CATEGORY ...]   -> prints the table, writes results.md / results.json
"""
import json
import os
import sys

import src  # noqa: F401
from src.io_utils import write_json, write_text
from src.metrics import format_table, mean_row

COLUMNS = ["clsname", "image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1", "pro"]


def collect(output_dir, categories):
    rows, missing = [], []
    for category in categories:
        path = os.path.join(output_dir, category, "eval", "metrics.json")
        if not os.path.isfile(path):
            missing.append(category)
            continue
        with open(path, "r", encoding="utf-8") as f:
            metrics = json.load(f)
        rows.append(dict(clsname=category, **{k: metrics.get(k) for k in COLUMNS[1:]}))
    return rows, missing


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    output_dir, categories = argv[0], argv[1:]
    rows, missing = collect(output_dir, categories)
    if not rows:
        print(f"error: {output_dir}: no eval/metrics.json for any of {', '.join(categories)}", file=sys.stderr)
        return 2
    mean = mean_row(rows, COLUMNS)
    table = format_table(rows + [mean], COLUMNS)
    write_text(os.path.join(output_dir, "results.md"), table + "\n")
    write_json(os.path.join(output_dir, "results.json"),
               {"categories": rows, "mean": mean, "missing": missing})
    print(table)
    if missing:
        print(f"missing (failed or not run): {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
