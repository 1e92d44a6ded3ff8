"""Export the service's inspection records, without the service running: CSV or JSON, filtered as GET /records is.

python records.py --records DIR [--db URL] [--format csv|json] [--label OK|REVIEW|NG] [--since T] [--until T]
    [--model_version N] [--output FILE]        (T: ISO 8601, e.g. 2026-12-07T06:00:00Z; naive times are UTC)
"""
import argparse

import src  # noqa: F401  (the environment, as every entry point)
from src.app import cli


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, metavar="DIR", help="the folder serve.py --records kept")
    parser.add_argument("--db", default=None, metavar="URL", help="the records' database (default: SQLite in DIR)")
    parser.add_argument("--format", choices=["csv", "json"], default="csv")
    parser.add_argument("--label", choices=["OK", "REVIEW", "NG"], default=None)
    parser.add_argument("--since", default=None, help="from this moment on (ISO 8601)")
    parser.add_argument("--until", default=None, help="before this moment (ISO 8601)")
    parser.add_argument("--model_version", type=cli.positive_int_argument, default=None)
    parser.add_argument("--output", default=None, help="a file (written atomically); default: standard output")
    args = parser.parse_args()
    from src.app.records import export
    return export(args)


if __name__ == "__main__":
    cli.run(main)
