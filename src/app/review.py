"""The review loop of the service (serve.py --records, with a token): a person reviews the NG and REVIEW records;
the reviewed false alarms build a candidate model version; the page shows what the candidate would decide on every
reviewed record; the service switches to it only when a person activates it, and back to any earlier version.
Every review, update, activation and rollback is an audit entry (who, when, what); every route needs the token.

    GET  /review                     the page
    GET  /review/queue               NG and REVIEW records, newest first, with their reviews (label, since, until,
                                     model_version, reviewed)
    POST /records/{id}/review        {"verdict": "false_alarm" | "defect", "note": "...", "user": "anna"}
    GET  /versions                   the model's versions, the active one, and the updates
    POST /updates                    {"user"}: a candidate version from the reviewed false alarms not taught yet (202)
    GET  /updates/{id}               building, ready (with the comparison) or failed (with the error)
    POST /versions/{n}/activate      {"user"}
    POST /versions/rollback          {"user"}: the active version's parent
    GET  /audit                      newest first

An update runs the project's commands in a child process (``teach.py --keep_active``, then ``predict.py
--model_version N`` on every reviewed record's image): the service answers on meanwhile, and the update's memory is
returned when it ends. An activation loads and compiles the version in the inference thread, between two batches,
then makes it the folder's active version (model.json) and answers with it.
"""
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from src.app.http import AuthorisedDep, RequestError, blocking, records_of, utc
from src.inference.versions import activate, list_versions, meta_path, parent_number, version_number
from src.utils.errors import InputError
from src.utils.io import read_json

logger = logging.getLogger("patchcore.review")
ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).with_name("static")


class UpdateFailed(RuntimeError):
    """A command of an update failed: its one-line error."""


class VersionControl:
    """The versions of the served model folder: listed, built by the commands (child processes), loaded.
    ``load``: version number -> Predictor (``src.inference.predict.load_model`` of this folder)."""

    def __init__(self, model_dir, load, pre_ckpt_path=None, command_seconds=3600):
        self.model_dir, self.load = str(model_dir), load
        self.pre_ckpt_path, self.command_seconds = pre_ckpt_path, command_seconds

    def versions(self):
        return list_versions(self.model_dir)

    def active_meta(self):
        return read_json(meta_path(self.model_dir), "model file")

    def parent_of_active(self):
        """The active version's parent's number, or None (the trained model)."""
        return parent_number(self.active_meta())

    def build(self, images, work):
        """A new version teaching ``images`` (paths), not made active: its number."""
        numbers = [entry["number"] for entry in self.versions()]
        self._run("teach.py", "--input", _listing(images, work, "teach.txt"), "--keep_active")
        built = sorted(set(entry["number"] for entry in self.versions()) - set(numbers))
        if len(built) != 1:
            raise UpdateFailed(f"teach.py ended without one new version (new: {built})")
        return built[0]

    def decide(self, number, images, work):
        """{file stem: predict.py's fields} of version ``number`` on ``images`` (paths)."""
        output = os.path.join(work, "decided")
        self._run("predict.py", "--input", _listing(images, work, "decide.txt"), "--model_version", str(number),
                  "--output_dir", output)
        return {entry["name"]: entry for entry in read_json(os.path.join(output, "predict.json"), "predictions")}

    def _run(self, script, *args):
        command = [sys.executable, str(ROOT / script), "--model_dir", self.model_dir, *args]
        if self.pre_ckpt_path:
            command += ["--pre_ckpt_path", str(self.pre_ckpt_path)]
        logger.info("update: %s", " ".join(command[1:]))
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=self.command_seconds)
        except subprocess.TimeoutExpired:
            raise UpdateFailed(f"{script} did not finish within {self.command_seconds} s") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise UpdateFailed(f"{script}: {lines[-1] if lines else f'exit code {done.returncode}'}")


def _listing(images, work, name):
    """A text file listing ``images`` (predict.py and teach.py read such lists): its path."""
    path = os.path.join(work, name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{os.path.abspath(image)}\n" for image in images)
    return path


def comparison(reviewed, decided):
    """What the candidate decides on every reviewed record, beside what was recorded, and the four counts a
    person weighs before activating it."""
    rows = []
    for record, review in reviewed:
        candidate = decided[Path(record["image_file"]).stem]
        rows.append({"record_id": record["id"], "verdict": review["verdict"], "label": record["label"],
                     "model_version": record["model"]["version"], "image_score": record["image_score"],
                     "candidate_label": candidate["label"], "candidate_image_score": candidate["image_score"]})
    alarms = [row for row in rows if row["verdict"] == "false_alarm"]
    defects = [row for row in rows if row["verdict"] == "defect"]
    return {"records": rows, "summary": {
        "false_alarms": len(alarms), "false_alarms_now_ok": sum(row["candidate_label"] == "OK" for row in alarms),
        "defects": len(defects), "defects_now_ok": sum(row["candidate_label"] == "OK" for row in defects)}}


def run_update(service, update_id, records):
    """Build update ``update_id`` (a thread): teach the ``records``' images, decide every reviewed record with the
    candidate, store the outcome (or the error) on the update."""
    log = service.records.reviews
    try:
        with tempfile.TemporaryDirectory(prefix="update-") as work:
            number = service.versions.build([service.records.file_path(record, "image") for record in records], work)
            reviewed = log.reviewed()
            decided = service.versions.decide(number, [service.records.file_path(record, "image")
                                                       for record, _ in reviewed], work)
            log.finish_update(update_id, version=number, comparison=comparison(reviewed, decided))
            logger.info("update %d: version %d built from %d false alarm(s)", update_id, number, len(records))
    except (UpdateFailed, InputError, OSError) as exc:
        log.finish_update(update_id, error=str(exc))
        logger.error("update %d failed: %s", update_id, exc)
    except Exception as exc:  # noqa: BLE001 -- stored on the update, the service serves on
        logger.exception("update %d failed", update_id)
        log.finish_update(update_id, error=f"{type(exc).__name__}: {exc}")


class Person(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="who does it (the audit log keeps it)")


class ReviewRequest(Person):
    verdict: Literal["false_alarm", "defect"] = Field(description="false_alarm: the image is OK; defect: confirmed")
    note: str | None = Field(None, max_length=1000)


def _review_parts(service):
    """The service's records and versions, or 404 when the service was started without them."""
    records = records_of(service)
    if service.versions is None:
        raise RequestError(404, "no_versions", "this service does not manage model versions")
    return records, service.versions


router = APIRouter()


@router.get("/review")
async def review_page():
    return FileResponse(STATIC / "review.html")


@router.get("/review/queue")
async def review_queue(service: AuthorisedDep, label: Literal["NG", "REVIEW"] | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       model_version: Annotated[int | None, Query(ge=1)] = None, reviewed: bool | None = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0):
    records = records_of(service)
    page = await blocking(lambda: records.reviews.queue(label, utc(since), utc(until), model_version, reviewed,
                                                        limit, offset))
    return {"limit": limit, "offset": offset, **page}


@router.post("/records/{record_id}/review")
async def review_record(record_id: str, body: ReviewRequest, request: Request, service: AuthorisedDep):
    records = records_of(service)   # NotFound and Conflict answer 404 and 409 (src/app/http.py)
    return await blocking(lambda: records.reviews.review(record_id, body.verdict, body.user, body.note,
                                                         {"client": request.client and request.client.host}))


@router.get("/versions")
async def versions(service: AuthorisedDep):
    records, control = _review_parts(service)
    return {"serving": service.predictor.identity, "versions": await blocking(control.versions),
            "updates": await blocking(records.reviews.updates)}


@router.post("/updates", status_code=202)
async def start_update(body: Person, service: AuthorisedDep):
    records, control = _review_parts(service)
    meta = await blocking(control.active_meta)
    taught = [entry["sha256"] for entry in meta.get("taught", [])]
    chosen = await blocking(records.reviews.false_alarms_to_teach, taught)
    if not chosen:
        raise RequestError(409, "conflict", "no reviewed false alarm that the active version has not taught")
    update_id = await blocking(records.reviews.start_update, body.user, version_number(meta),
                               [record["id"] for record in chosen])
    threading.Thread(target=run_update, args=(service, update_id, chosen), name=f"update-{update_id}",
                     daemon=True).start()
    return await blocking(records.reviews.update, update_id)


@router.get("/updates/{update_id}")
async def get_update(update_id: int, service: AuthorisedDep):
    records, _ = _review_parts(service)
    return await blocking(records.reviews.update, update_id)


async def _switch(service, number, body, action):
    """Serve version ``number`` and make it the folder's active one; the audit entry ``action``."""
    records, control = _review_parts(service)
    async with service.switching:   # one switch at a time, its checks included
        known = [entry["number"] for entry in await blocking(control.versions)]
        if number not in known:
            raise RequestError(404, "not_found", f"no model version {number} (versions: "
                                                 f"{', '.join(map(str, known))})")
        before = service.predictor.identity["version"]
        if number == before:
            raise RequestError(409, "conflict", f"version {number} is the active one already")
        try:
            queued = await blocking(service.worker.switch, lambda: control.load(number),
                                    lambda: activate(control.model_dir, number))   # waits for room in the queue
            predictor = await asyncio.wrap_future(queued)
        except InputError as exc:   # the version's files are not what they should be: the old one serves on
            raise RequestError(409, "cannot_activate", str(exc)) from None
    await blocking(records.reviews.audit, body.user, action, number, {"from": before, "to": number})
    logger.info("%s: version %d -> %d by %s", action, before, number, body.user)
    return {"serving": predictor.identity, "previous": before}


@router.post("/versions/rollback")
async def rollback(body: Person, service: AuthorisedDep):
    _, control = _review_parts(service)
    parent = await blocking(control.parent_of_active)
    if parent is None:
        raise RequestError(409, "conflict", "the active version is the trained model: no earlier version to roll "
                                            "back to")
    return await _switch(service, parent, body, "rollback")


@router.post("/versions/{number}/activate")
async def activate_version(number: int, body: Person, service: AuthorisedDep):
    return await _switch(service, number, body, "activate")


@router.get("/audit")
async def audit(service: AuthorisedDep, action: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0):
    records = records_of(service)
    return {"entries": await blocking(lambda: records.reviews.audit_log(action, limit, offset))}

