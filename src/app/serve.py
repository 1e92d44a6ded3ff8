"""serve.py: the online inspection service (FastAPI + uvicorn): ``POST /predict`` returns what predict.py writes.

The model is loaded once and runs in one inference thread (MindSpore calls are not assumed to be thread-safe),
compiled for every batch size before the service answers. Requests are decoded in the server's thread pool and
wait in a bounded queue; the inference thread takes up to ``max_batch`` of them at a time and scores them
together. A full queue answers 503 with ``Retry-After``.

Bad requests get a 4xx JSON ``{"error": ..., "detail": ...}`` and the service goes on serving: a body over
``max_upload_mb`` (413), a content type other than multipart or JSON (415), bad base64 or an undecodable or
truncated image (400), more pixels than ``max_pixels`` declared in the image header (413, before decoding),
a malformed JSON body (422). Images of any channel count and 8 or 16 bits are converted as predict.py does.
Nothing on the wire is pickled: images are PNG/JPEG bytes, maps a float16 ``.npy`` (``allow_pickle=False``)
or a PNG, both base64 in JSON.
"""
import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, NamedTuple

import cv2
import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.formparsers import MultiPartParser

from src.app.http import (AuthorisedDep, RecordFilter, RequestError, ServiceDep, add_error_handlers, blocking,
                          check_token, records_of)
from src.app.review import router as review_router
from src.data.sample import decode_image, encoded_size
from src.utils.errors import InputError

logger = logging.getLogger("patchcore.serve")
STATIC = Path(__file__).with_name("static")
MAP_SIDE = 512   # longest side of a map returned as PNG
MAX_CLIENT_BYTES = 2048   # a request's client metadata, as compact JSON


class PredictRequest(BaseModel):
    image: str = Field(description="the image file's bytes (PNG, JPEG, BMP, TIFF), base64")
    return_map: bool = False
    return_overlay: bool = False
    map_format: str = Field("npy", pattern="^(npy|png)$", description="npy: float16 raw map; png: normalised map")
    client: dict | None = Field(None, description="what the record keeps of the request's origin (line, part id, "
                                                  f"...): a JSON object of at most {MAX_CLIENT_BYTES} bytes")


class Region(BaseModel):
    bbox: list[int]
    area: int
    max_score: float
    source: str   # "pixel_threshold", or "score_peak": an NG/REVIEW image's peak when no pixel reached the threshold


class ModelId(BaseModel):
    name: str
    version: int = Field(description="the model version that answered (teach.py; 1: as trained)")
    sha256: str = Field(description="of that version's model.json")


class PredictResponse(BaseModel):
    request_id: str
    image_score: float
    raw_score: float
    label: str = Field(description="OK, REVIEW (between the review and the image threshold: for a person) or NG")
    image_threshold: float
    review_threshold: float | None
    review_image_score: float | None = Field(description="the image_score from which an image is REVIEW (the image "
                                                         "threshold's is 0.5); null: the model says OK or NG")
    pixel_threshold: float | None
    regions: list[Region]
    image_size: list[int]
    map_size: list[int]
    view: dict | None
    model: ModelId
    overlay_png: str | None = None
    record_id: str | None = Field(None, description="the inspection record of this decision (services with records)")
    map: str | None = None
    map_format: str | None = None


def warm_up(predictor, max_batch):
    """MindSpore compiles a graph per batch size: compile every size a batch can have now, not on a user's request
    (each costs about a second)."""
    width, height = predictor.model.meta["image_size"]
    started = time.perf_counter()
    for size in range(1, max_batch + 1):
        list(predictor.predict([np.zeros((height, width, 3), np.uint8)] * size))
    logger.info("model version %d ready in %.2f s: network compile %.2f s (first call per input size), then batches "
                "of 1 to %d", predictor.identity["version"], time.perf_counter() - started,
                predictor.model.compile_seconds, max_batch)


class InferenceWorker:
    """The one thread that runs the model: a bounded queue of (image, Future), ``max_batch`` at a time; a model
    switch (:meth:`switch`) runs in the same thread, between two batches."""

    def __init__(self, predictor, max_batch, queue_size):
        self.predictor, self.max_batch = predictor, max_batch
        self.jobs = queue.Queue(maxsize=queue_size)
        warm_up(predictor, max_batch)
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.thread.start()

    def submit(self, image):
        future = Future()
        try:
            self.jobs.put_nowait((image, future))
        except queue.Full:
            raise RequestError(503, "busy", f"the queue of {self.jobs.maxsize} requests is full; retry shortly",
                               {"Retry-After": "1"}) from None
        return future

    def switch(self, load, commit):
        """A Future of the predictor ``load()`` returns, which then answers every later request: ``load`` runs in
        the inference thread (MindSpore is not assumed thread-safe), the new model is compiled there, then
        ``commit()`` runs (making it the folder's active version) and only then does it answer. A failure on the way
        leaves the old predictor answering. Waits for room in the queue."""
        def task():
            predictor = load()
            warm_up(predictor, self.max_batch)
            commit()
            self.predictor = predictor
            return predictor
        future = Future()
        self.jobs.put((task, future))
        return future

    def _run(self):
        while True:
            batch = [self.jobs.get()]
            if callable(batch[0][0]):
                self._run_task(*batch[0])
                continue
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if callable(job[0]):   # a switch waits for the batch before it
                    self._answer(batch)
                    batch = []
                    self._run_task(*job)
                    break
                batch.append(job)
            if batch:
                self._answer(batch)

    def _answer(self, batch):
        try:
            results = list(self.predictor.predict([image for image, _ in batch]))
            for (_, future), result in zip(batch, results):
                future.set_result(result)
        except Exception as exc:  # noqa: BLE001 -- handed to the requests, the thread serves on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)

    @staticmethod
    def _run_task(task, future):
        try:
            future.set_result(task())
        except Exception as exc:  # noqa: BLE001 -- handed to the caller, the thread serves on
            future.set_exception(exc)


def _png_bytes(rgb_or_gray):
    array = rgb_or_gray[:, :, ::-1] if rgb_or_gray.ndim == 3 else rgb_or_gray
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    return encoded.tobytes()


def _png_base64(rgb_or_gray):
    return base64.b64encode(_png_bytes(rgb_or_gray)).decode("ascii")


def _map_png(result):
    """The normalised map as PNG bytes, at most MAP_SIDE pixels on its longest side (0-255 for 0-1)."""
    normalised = result.normalised_map
    scale = min(1.0, MAP_SIDE / max(normalised.shape))
    small = cv2.resize(normalised, (max(1, round(normalised.shape[1] * scale)),
                                    max(1, round(normalised.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return _png_bytes((np.clip(small, 0, 1) * 255).round().astype(np.uint8))


def _map_payload(result, map_format):
    if map_format == "png":
        return base64.b64encode(_map_png(result)).decode("ascii")
    buffer = io.BytesIO()
    np.save(buffer, result.raw_map.astype(np.float16), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Service:
    """What the routes share, kept on ``app.state.service``: the predictor, its inference thread, the limits and
    the metrics (a registry of its own, so that two apps in one process do not share counters)."""

    def __init__(self, predictor, max_batch, queue_size, max_upload_mb, max_pixels, records=None, token=None,
                 protect_predict=False, versions=None):
        self.max_pixels = max_pixels
        self.records, self.token, self.protect_predict = records, token, protect_predict
        self.versions, self.switching = versions, asyncio.Lock()
        self.worker = InferenceWorker(predictor, max_batch, queue_size)
        self.max_bytes = int(max_upload_mb * 2 ** 20)
        self.limits = {"max_batch": max_batch, "queue": queue_size, "max_upload_bytes": self.max_bytes,
                       "max_pixels": max_pixels}
        self.registry = CollectorRegistry()
        self.requests_total = Counter("patchcore_requests_total", "predict requests", ["status"],
                                      registry=self.registry)
        self.latency = Histogram("patchcore_request_seconds", "predict latency", registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        Gauge("patchcore_queue_depth", "requests waiting for the model", registry=self.registry).set_function(
            self.worker.jobs.qsize)

    @property
    def predictor(self):
        """The predictor answering now (the inference thread's: an activation replaces it there)."""
        return self.worker.predictor

    def decode(self, data):
        """The RGB image of an upload's bytes, within the byte and pixel limits (the pixels read from the header)."""
        if len(data) > self.max_bytes:
            raise RequestError(413, "too_large", f"the image is {len(data)} bytes; the limit is {self.max_bytes}")
        try:
            width, height = encoded_size(data, "upload")
            if width * height > self.max_pixels:
                raise RequestError(413, "too_many_pixels",
                                   f"the image declares {width}x{height} pixels; the limit is {self.max_pixels}")
            return decode_image(data, "upload")
        except InputError as exc:
            raise RequestError(400, "bad_image", exc.problem) from None


class Upload(NamedTuple):
    """A predict request's image bytes and options, from either content type."""
    data: bytes
    return_map: bool
    return_overlay: bool
    map_format: str
    client: dict


def client_metadata(value):
    """The client metadata of a request (a JSON object, or its text from a form field), within MAX_CLIENT_BYTES."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RequestError(400, "bad_request", "client must be a JSON object") from None
    if not isinstance(value, dict):
        raise RequestError(400, "bad_request", "client must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_CLIENT_BYTES:
        raise RequestError(413, "too_large", f"client metadata is {size} bytes; the limit is {MAX_CLIENT_BYTES}")
    return value


async def read_body(request, max_bytes):
    """The request's body, refused (413) as soon as it is declared or read to be too long for an image of at most
    ``max_bytes`` bytes."""
    max_body = max_bytes * 4 // 3 + 65536   # base64 and multipart framing around the image
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise RequestError(413, "too_large", f"the body is {declared} bytes; the limit is about {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise RequestError(413, "too_large", f"the body exceeds the limit of about {max_bytes} bytes")
    return bytes(body)


def json_upload(body):
    try:
        payload = PredictRequest.model_validate_json(body)
    except ValueError as exc:
        raise RequestError(422, "bad_request", str(exc).splitlines()[0]) from None
    try:
        data = base64.b64decode(payload.image, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "bad_base64", "the image field is not valid base64") from None
    return Upload(data, payload.return_map, payload.return_overlay, payload.map_format, client_metadata(payload.client))


async def multipart_upload(body, headers):
    async def chunks():
        yield body
    try:
        form = await MultiPartParser(headers, chunks()).parse()
    except Exception as exc:  # noqa: BLE001 -- any parser failure is a bad request
        raise RequestError(400, "bad_request", f"malformed multipart body ({exc})") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "bad_request", "multipart needs a file field named 'file'")
        flag = {key: str(form.get(key, "false")).lower() in ("1", "true", "yes") for key in
                ("return_map", "return_overlay")}
        map_format = str(form.get("map_format", "npy"))
        if map_format not in ("npy", "png"):
            raise RequestError(400, "bad_request", "map_format must be npy or png")
        return Upload(await upload.read(), flag["return_map"], flag["return_overlay"], map_format,
                      client_metadata(form.get("client")))
    finally:
        await form.close()


async def parse_upload(request, max_bytes):
    """The ``Upload`` of a multipart or JSON request; the body is read (within the limit) only for these two."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return json_upload(await read_body(request, max_bytes))
    if kind == "multipart/form-data":
        return await multipart_upload(await read_body(request, max_bytes), request.headers)
    raise RequestError(415, "unsupported_media_type", f"content type {kind or 'none'!r}: send multipart/form-data "
                                                      "with a file field, or application/json")


def response_fields(result, upload, request_id):
    """predict.py's fields of ``result`` for the wire, with the overlay and map the request asked for."""
    fields = dict(result.fields, request_id=request_id)
    fields.pop("input_path", None)
    if upload.return_overlay:
        fields["overlay_png"] = _png_base64(result.picture())
    if upload.return_map:
        fields["map"], fields["map_format"] = _map_payload(result, upload.map_format), upload.map_format
    return fields


def record_decision(records, result, upload, seconds):
    """Store ``result`` with the upload's image (as sent), its normalised map (a PNG of at most MAP_SIDE pixels)
    and the client metadata; returns the record's id."""
    fields = dict(result.fields, image_sha256=hashlib.sha256(upload.data).hexdigest(), latency_ms=1000 * seconds)
    return records.add(fields, upload.data, image_suffix(upload.data), client=upload.client,
                       map_png=_map_png(result))


def expire_ok_images(records, days, every_seconds=600):
    """Remove, now and then every ``every_seconds``, the images of OK records older than ``days`` (a daemon
    thread; the records and their maps stay)."""
    def run():
        while True:
            try:
                removed = records.expire_ok_images(datetime.now(timezone.utc) - timedelta(days=days))
                if removed:
                    logger.info("retention: removed the images of %d OK records older than %g days", removed, days)
            except Exception:  # noqa: BLE001 -- retention must not stop the service; tried again later
                logger.exception("retention failed")
            time.sleep(every_seconds)
    threading.Thread(target=run, name="retention", daemon=True).start()


def image_suffix(data):
    """The file suffix of an encoded image's format (its magic bytes)."""
    for magic, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
                          (b"MM\x00*", ".tif")):
        if data.startswith(magic):
            return suffix
    return ".img"


router = APIRouter()


@router.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True)
async def predict(request: Request, service: ServiceDep):
    request_id, started, status, size, label = uuid.uuid4().hex[:12], time.perf_counter(), 500, 0, "-"
    try:
        if service.protect_predict:
            check_token(request, service)
        upload = await parse_upload(request, service.max_bytes)
        size = len(upload.data)
        image = await blocking(service.decode, upload.data)
        result = await asyncio.wrap_future(service.worker.submit(image))
        label = result.label
        fields = response_fields(result, upload, request_id)
        if service.records is not None:   # committed before the answer: every 200 has its record
            fields["record_id"] = await blocking(record_decision, service.records, result, upload,
                                                 time.perf_counter() - started)
        status = 200
        return fields
    except RequestError as exc:
        status = exc.status
        raise
    finally:
        seconds = time.perf_counter() - started
        service.requests_total.labels(str(status)).inc()
        service.latency.observe(seconds)
        logger.info("request %s: %d bytes, %.1f ms, %s, %s", request_id, size, 1000 * seconds, status, label)


@router.get("/records")
async def list_records(service: AuthorisedDep, where: Annotated[RecordFilter, Query()],
                       limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0):
    records = records_of(service)
    page = await blocking(lambda: records.query(**where.arguments(), limit=limit, offset=offset))
    return {"limit": limit, "offset": offset, **page}


@router.get("/records/counts")
async def record_counts(service: AuthorisedDep, where: Annotated[RecordFilter, Query()]):
    records = records_of(service)
    arguments = where.arguments()
    arguments.pop("label")
    return {"counts": await blocking(lambda: records.counts(**arguments))}


@router.get("/records/export")
async def export_records(service: AuthorisedDep, where: Annotated[RecordFilter, Query()],
                         format: Annotated[Literal["csv", "json"], Query()] = "json"):   # noqa: A002 (the API's name)
    records = records_of(service)
    media = "text/csv" if format == "csv" else "application/json"
    # a synchronous generator: Starlette iterates it in its thread pool, a page of records at a time
    return StreamingResponse(records.export(format, **where.arguments()), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="records.{format}"'})


@router.get("/records/{record_id}")
async def get_record(record_id: str, service: AuthorisedDep):
    record = await blocking(records_of(service).get, record_id)
    if record is None:
        raise RequestError(404, "not_found", f"no record {record_id!r}")
    return record


@router.get("/records/{record_id}/{kind}")
async def get_record_file(record_id: str, kind: Literal["image", "map"], service: AuthorisedDep):
    """The image as it was sent, or its normalised map as a PNG (0-255 for 0-1, 0.5 the image threshold)."""
    records = records_of(service)
    record = await blocking(records.get, record_id)
    if record is None:
        raise RequestError(404, "not_found", f"no record {record_id!r}")
    path = records.file_path(record, kind)
    if path is None or not path.is_file():
        raise RequestError(404, "not_found", f"record {record_id!r} keeps no {kind} (retention)")
    return FileResponse(path)


@router.get("/health")
async def health(service: ServiceDep):
    worker = service.worker
    return {"status": "ok", "inference_thread": worker.thread.is_alive(), "queue_depth": worker.jobs.qsize()}


@router.get("/model")
async def model(service: ServiceDep):
    predictor = service.predictor
    meta = predictor.model.meta
    return {"model": predictor.identity, "category": meta["category"], "view": meta["view"],
            "image_size": meta["image_size"], "thresholds": meta.get("thresholds"),
            "image_score": meta["image_score"], "tasks": len(predictor.model.tasks),
            "backbone": meta["config"]["patch"]["backbone_name"], "versions": meta.get("versions"),
            "limits": service.limits}


@router.get("/metrics")
async def metrics(service: ServiceDep):
    return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def page():
    return FileResponse(STATIC / "index.html")


def create_app(predictor, max_batch=4, queue_size=16, max_upload_mb=32.0, max_pixels=64_000_000, records=None,
               token=None, protect_predict=False, versions=None):
    """The FastAPI app serving ``predictor`` (``src.inference.predict.Predictor``); ``records``: a
    ``src.records.store.RecordStore`` every decision is written to; ``token``: what the records' routes (and, with
    ``protect_predict``, /predict) need; ``versions``: a ``src.app.review.VersionControl`` of the served folder (the
    review loop's updates and activations, with ``records``)."""
    app = FastAPI(title="PatchCore inspection", version="1", description=__doc__.split("\n\n")[0])
    app.state.service = Service(predictor, max_batch, queue_size, max_upload_mb, max_pixels, records, token,
                                protect_predict, versions)
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(review_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def service_token(token_file=None):
    """The token the records' routes need: the first line of ``token_file``, else the PATCHCORE_TOKEN environment
    variable, else None (then nothing that needs one is granted)."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as exc:
            raise InputError(token_file, f"cannot read the token file ({exc.strerror})") from None
        if not token:
            raise InputError(token_file, "the token file is empty")
        return token
    return os.environ.get("PATCHCORE_TOKEN") or None


def free_port():
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(model_dir, *args, wait_seconds=120, env=None):
    """Start serve.py for ``model_dir`` on 127.0.0.1 (a free port) in a child process (environment ``env``, default
    this one's) and wait, at most ``wait_seconds``, until it answers /health: (process, base URL). Its output goes
    to ``process.log`` (a temporary file), quoted in the error when it fails to start. For tests and benchmarks."""
    import httpx
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, str(root / "serve.py"), "--model_dir", str(model_dir), "--port",
                                str(port), *args], cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True,
                               env=env)
    process.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    process.wait()
    log.seek(0)
    raise RuntimeError(f"serve.py did not answer /health within {wait_seconds} s:\n{log.read()[-4000:]}")


def shut_down(process, wait_seconds=20):
    """Stop a ``launch``-ed server (terminate, then kill)."""
    process.terminate()
    try:
        process.wait(timeout=wait_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.log.close()
