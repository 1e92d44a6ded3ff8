"""Logging: the ``patchcore`` console logger, per-run log files, and lines both printed and logged."""
import contextlib
import logging
import sys

logger = logging.getLogger("patchcore")
LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging():
    """Console at INFO on stderr (once)."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(LOG_FORMAT)
        logger.addHandler(console)


@contextlib.contextmanager
def file_logging(log, path):
    """``log`` also written to ``path`` during the block (not propagated: a logger of its own)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(LOG_FORMAT)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def logging_to(log_path):
    """Console logging plus ``log_path`` for the duration of the block."""
    setup_logging()
    with file_logging(logger, log_path):
        yield


def say_to(log):
    """``say(message, *args, level=INFO)``: print a line (the console) and write it to ``log`` (its files)."""
    def say(message, *args, level=logging.INFO):
        text = message % args if args else message
        print(text, flush=True)
        log.log(level, text)
    return say
