"""Errors as RFC 9457 problem details (``application/problem+json``), never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://fedcredit.dev/problems/"
log = logging.getLogger("fedcredit.service")

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` lists every bad field of an invalid input."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class ProblemError(Exception):
    """Raise to answer with a problem: ``slug`` names its type, ``detail`` says what and where."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[FieldProblem] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.headers = headers or {}
        self.errors = errors


def problem_response(
    request: Request | str,
    status: int,
    slug: str,
    detail: str,
    headers: dict[str, str] | None = None,
    errors: list[FieldProblem] | None = None,
) -> JSONResponse:
    body = Problem(
        type=TYPE_BASE + slug,
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=request if isinstance(request, str) else request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def validation_problems(exc: RequestValidationError) -> list[FieldProblem]:
    """Every bad field, by its path in the request (e.g. ``applicants.3.monthly_revenue``); no values."""
    return [
        FieldProblem(field=_field(tuple(e.get("loc", ()))), message=str(e.get("msg", "")))
        for e in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Answer every error as a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.slug, exc.detail, exc.headers, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return problem_response(request, 422, "invalid-input", "the request body is not valid JSON")
        errors = validation_problems(exc)
        shown = ", ".join(e.field for e in errors[:10]) + (
            f" and {len(errors) - 10} more" if len(errors) > 10 else ""
        )
        applicants = all(e.field.startswith(("applicant.", "applicants.")) for e in errors)
        what = "fail the dataset schema" if applicants else "are invalid"
        return problem_response(
            request, 422, "invalid-input", f"{len(errors)} field(s) {what}: {shown}", errors=errors
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # e.g. the database restarting: a token past its cache time cannot be checked for revocation
        log.error("database unavailable on %s: %s", request.url.path, type(exc).__name__)
        return problem_response(
            request,
            503,
            "database-unavailable",
            "the service's database cannot be reached, so nothing was done; retry later",
            {"Retry-After": "1"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(request, exc.status_code, slug, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path)  # no locals, no body
        return problem_response(request, 500, "internal", "an unexpected error; nothing was scored")
