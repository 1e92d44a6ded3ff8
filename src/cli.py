"""What every entry point shares: arguments, logging, MindSpore context and error reporting."""
import argparse
import contextlib
import logging
import sys

from src.errors import InputError

logger = logging.getLogger("patchcore")
LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def base_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset_path", required=True, help="folder holding MVTec-layout categories")
    parser.add_argument("--category", required=True, help="category folder name, e.g. screw")
    parser.add_argument("--output_dir", default="output", help="where <category>/ is written (default: output)")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--pre_ckpt_path", default=None, help="backbone .ckpt (src/pthtockpt.py); "
                                                                  "omitted: seeded random weights")
    parser.add_argument("--config", default=None, help="YAML config (default: configs/patchcore.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seeds init, projection, coreset start")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. -o percentage=0.01 (repeatable)")
    return parser


def set_device(device_target, device_id):
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device_target, device_id)
    except RuntimeError:
        # The runtime is already up (a Python API caller ran MindSpore first): fine if it is the same device.
        if ms.get_context("device_target") != device_target:
            raise


def setup_logging():
    """Console at INFO on stderr (once)."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(LOG_FORMAT)
        logger.addHandler(console)


@contextlib.contextmanager
def logging_to(log_path):
    """Console logging plus ``log_path`` for the duration of the block."""
    setup_logging()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(LOG_FORMAT)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def run(main):
    """Run ``main()``; bad input becomes one line on stderr and exit code 2."""
    try:
        code = main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
