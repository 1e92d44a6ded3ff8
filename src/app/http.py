"""What the service's routes share: the JSON error every 4xx carries, the service they run on, the token check,
the records filter, and a blocking call run off the event loop."""
import asyncio
import hmac
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from src.records.reviews import Conflict, NotFound


class RequestError(Exception):
    """A bad request: its HTTP status and the two JSON fields."""

    def __init__(self, status, error, detail, headers=None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def service_of(request: Request):
    return request.app.state.service


ServiceDep = Annotated[Any, Depends(service_of)]   # serve.Service


def check_token(request, service):
    """401 unless the request carries the service's token (``Authorization: Bearer <token>``); a service without
    a token grants nothing that needs one."""
    given = request.headers.get("authorization", "")
    if service.token is None or not hmac.compare_digest(given.encode(), f"Bearer {service.token}".encode()):
        raise RequestError(401, "unauthorized", "this needs the service's token: Authorization: Bearer <token>",
                           {"WWW-Authenticate": "Bearer"})


def authorised(request: Request, service: ServiceDep):
    check_token(request, service)
    return service


AuthorisedDep = Annotated[Any, Depends(authorised)]


def records_of(service):
    if service.records is None:
        raise RequestError(404, "no_records", "this service keeps no records (serve.py --records)")
    return service.records


def utc(moment):
    """A query's datetime in UTC (a naive one is taken as UTC)."""
    return None if moment is None else (moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment)


class RecordFilter(BaseModel):
    """Which records: by label, time range [since, until) and model version."""
    label: Literal["OK", "REVIEW", "NG"] | None = None
    since: datetime | None = None
    until: datetime | None = None
    model_version: int | None = Field(None, ge=1)

    def arguments(self):
        return {"label": self.label, "since": utc(self.since), "until": utc(self.until),
                "model_version": self.model_version}


async def blocking(function, *args):
    """``function(*args)`` in the server's thread pool (database and file work), awaited."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def request_error(request, exc):
    return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def validation_error(request, exc):
    """A request FastAPI could not validate (a field missing, a value out of range): 422 in the service's form."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return JSONResponse({"error": "bad_request", "detail": f"{where}: {first.get('msg', 'invalid')}"},
                        status_code=422)


async def not_found(request, exc):
    return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)


async def conflict(request, exc):
    return JSONResponse({"error": "conflict", "detail": str(exc)}, status_code=409)


def add_error_handlers(app):
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(NotFound, not_found)     # the review log's: an unknown record, update
    app.add_exception_handler(Conflict, conflict)      # a second review, a second update at once
