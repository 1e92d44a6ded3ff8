"""Serve a trained model over HTTP: POST /predict, GET /health, /model, /metrics and a web page at /.

python serve.py --model_dir OUTPUT/CATEGORY [--host 127.0.0.1] [--port 8080] [--device_target CPU]
    [--max_batch 4] [--queue 16] [--max_upload_mb 32] [--max_pixels 64000000]
"""
import argparse

import src  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.app import cli


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
    args = parser.parse_args()
    import uvicorn

    from src.app.serve import create_app
    from src.inference.predict import load_model
    cli.setup_logging()
    predictor = load_model(args.model_dir, args.pre_ckpt_path, args.device_target, args.device_id)
    app = create_app(predictor, args.max_batch, args.queue, args.max_upload_mb, args.max_pixels)
    cli.logger.info("serving %s on http://%s:%d/", args.model_dir, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run(main)
