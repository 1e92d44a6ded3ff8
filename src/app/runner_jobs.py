"""``python -m src.app.runner_jobs MODEL.mindir INPUT_DIR RESULT_DIR SAVE_FEATURES``: checks the export's models and
banks against their sha256 and prints the C++ runner's arguments, one job per line, tab-separated (used by
scripts/run_infer_cpp.sh)."""
import sys

from src.deploy.package import runner_jobs
from src.utils.errors import InputError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        print("usage: python -m src.deploy.export MODEL.mindir INPUT_DIR RESULT_DIR SAVE_FEATURES(0|1)",
              file=sys.stderr)
        return 2
    try:
        jobs = runner_jobs(*argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any("\t" in arg or "\n" in arg for job in jobs for arg in job):
        print("error: a path holds a tab or a line break, which run_infer_cpp.sh cannot pass on", file=sys.stderr)
        return 2
    print("\n".join("\t".join(job) for job in jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
