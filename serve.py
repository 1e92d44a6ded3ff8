"""Serve a trained model over HTTP: POST /predict, GET /health, /model, /metrics and a web page at /.

python serve.py --model_dir OUTPUT/CATEGORY [--host 127.0.0.1] [--port 8080] [--device_target CPU]
    [--max_batch 4] [--queue 16] [--max_upload_mb 32] [--max_pixels 64000000]
    [--records DIR [--db URL]] [--token_file FILE] [--protect_predict]
"""
import argparse

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli
from src.utils.errors import InputError


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a trained model: OUTPUT_DIR/CATEGORY of train.py")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only); 0.0.0.0 "
                                                            "listens on every interface")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--pre_ckpt_path", default=None, help="backbone .ckpt (default: the one model.json records)")
    parser.add_argument("--max_batch", type=cli.positive_int_argument, default=4,
                        help="requests scored together")
    parser.add_argument("--queue", type=cli.positive_int_argument, default=16,
                        help="requests that may wait; more get 503")
    parser.add_argument("--max_upload_mb", type=float, default=32.0)
    parser.add_argument("--max_pixels", type=cli.positive_int_argument, default=64_000_000,
                        help="larger images get 413, before decoding")
    parser.add_argument("--records", default=None, metavar="DIR",
                        help="keep a record of every decision, and its image, in DIR (SQLite there unless --db)")
    parser.add_argument("--db", default=None, metavar="URL", help="the records' database, e.g. "
                                                                  "postgresql+psycopg://user@host:5432/name")
    parser.add_argument("--token_file", default=None, help="a file holding the token the records' routes need "
                                                           "(default: the PATCHCORE_TOKEN environment variable)")
    parser.add_argument("--protect_predict", action="store_true", help="/predict needs the token too")
    parser.add_argument("--keep_ok_images", type=float, default=None, metavar="DAYS",
                        help="with --records: remove the images of OK decisions older than DAYS (default: keep all)")
    args = parser.parse_args()
    import uvicorn

    from src.app.serve import create_app, service_token
    from src.inference.predict import load_model
    cli.setup_logging()
    if args.db and not args.records:
        raise InputError("--db", "goes with --records DIR (where the images are kept)")
    token = service_token(args.token_file)
    records = None
    if args.records:
        from src.records.store import RecordStore
        records = RecordStore(args.records, args.db, sweep=True)
        if args.keep_ok_images is not None:
            from src.app.serve import expire_ok_images
            expire_ok_images(records, args.keep_ok_images)
    predictor = load_model(args.model_dir, args.pre_ckpt_path, args.device_target, args.device_id)
    versions = None
    if records is not None:   # the review loop: updates built from reviewed false alarms, activations
        from src.app.review import VersionControl
        versions = VersionControl(args.model_dir, lambda number: load_model(
            args.model_dir, args.pre_ckpt_path, args.device_target, args.device_id, number), args.pre_ckpt_path)
    app = create_app(predictor, args.max_batch, args.queue, args.max_upload_mb, args.max_pixels, records, token,
                     args.protect_predict, versions)
    cli.logger.info("serving %s on http://%s:%d/", args.model_dir, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run(main)
