"""The scoring service: ``create_app(settings)`` builds the FastAPI app members and auditors call.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
definition time, and the request bodies are classes built from the dataset schema inside
:func:`create_app`.
"""

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import hashlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from sqlmodel import Session, col, select
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from coordinator.service import problems
from coordinator.service.applicants import request_models
from coordinator.service.audit_writer import AuditUnavailable
from coordinator.service.pipeline import Job, ModelUnavailable, PipelineStopped
from coordinator.service.problems import ProblemError, problem_response
from coordinator.service.rate_limit import retry_after
from coordinator.service.schemas import (
    AuditEntries,
    BatchScoreResponse,
    ChainVerification,
    DecisionResponse,
    Health,
    ModelCardOut,
    ModelList,
    PolicyList,
    PolicyStatus,
    QueryList,
    ScoreResponse,
)
from coordinator.service.scorer import ServingModel
from coordinator.service.settings import ServiceSettings
from coordinator.service.state import ServiceState
from policies.audit import AuditEntry, sign_head, verify_chain
from policies.documents import PolicyError
from policies.member_keys import Caller
from policies.query_log import history, utc_stamp
from policies.registry import (
    RegistryError,
    active_version,
    get_version,
    parse_version,
    promote,
    rollback,
    versions,
)
from policies.signing import key_id, read_public_keys, verify_policy

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]
bearer = HTTPBearer(auto_error=False, description="A member token from `fedcredit keys issue`")
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: such a filter is a 422, not a 500
MAX_SEQ = 2**31 - 1  # entry numbers are 32-bit integers in the database
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fedcredit"'}
JSON_TYPE = (b"content-type", b"application/json")


class Guard:
    """Pure ASGI middleware: refuses bodies over the limit (413), times every request and answers
    the scoring routes itself (:class:`DirectRoutes`)."""

    def __init__(self, app: ASGIApp, state: ServiceState, direct: "DirectRoutes") -> None:
        self.app, self.state, self.direct = app, state, direct

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        limit = self.state.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        route = self.direct.route(scope)
        try:
            if route is not None:
                status = await self.direct.answer(route, scope, receive, send, limit)
            else:
                status = await self._app(scope, receive, send, limit)
        except _TooLarge:
            await self._too_large(scope, receive, send, limit)
            return
        path = getattr(scope.get("route"), "path", "unmatched")
        self.state.metrics.request(scope["method"], path, status, time.perf_counter() - started)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> int:
        """The app's answer (every route but the scoring ones), the body counted as it comes; its status."""
        status = 500
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, counted, sending)
        return status

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
        self.state.metrics.refusal("payload-too-large")
        self.state.metrics.request(scope["method"], "unmatched", 413, 0.0)
        response = problem_response(
            str(scope.get("path", "")),
            413,
            "payload-too-large",
            f"the request body is over {limit} bytes; send fewer applicants",
        )
        await response(scope, receive, send)


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as the server gives names)."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _body(receive: Any, limit: int) -> bytes:
    """The request body, read to its end (:class:`_TooLarge` past ``limit`` bytes)."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _TooLarge(Exception):
    pass


Answerer = Callable[[bytes | None, bytes], Awaitable[bytes]]  # (authorization, body) -> JSON


class DirectRoutes:
    """The scoring routes, answered by :class:`Guard` itself from the request's header and body
    bytes: Starlette's request and response objects, exception middleware and router, with
    FastAPI's dependency solving, took a large share of a scoring request's time in the event loop.
    Errors go to the app's exception handlers, as on any route; one that has none (a bug) goes on
    to the server error middleware, as on any route. Anything else, a scoring path with another
    method included, goes to the app."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes: dict[str, Route] = {}  # by path: the scoring paths have no parameters
        self.answerers: dict[str, Answerer] = {}

    def add(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], answerer: Answerer) -> None:
        """``answerer`` answers ``POST path``; ``endpoint`` is FastAPI's route for it (documented)."""
        self.routes[path] = Route(path, endpoint, methods=["POST"])
        self.answerers[path] = answerer

    def route(self, scope: dict[str, Any]) -> Route | None:
        """The scoring route ``scope`` asks for, if any (behind a path prefix, a root path, the
        app's own router finds it)."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        return self.routes.get(scope["path"])

    async def answer(self, route: Route, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> int:
        """Answer a scoring request; its status."""
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        try:
            body = await _body(receive, limit)
            content = await self.answerers[route.path](_header(scope, b"authorization"), body)
        except _TooLarge:
            raise  # Guard's own
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            request = Request(scope, receive, send)
            answered = handler(request, exc)
            response = await answered if inspect.isawaitable(answered) else answered
            await response(scope, receive, send)
            return response.status_code
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(content)).encode()), JSON_TYPE],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return 200

    def _handler(self, exc: Exception) -> Callable[[Request, Any], Response | Awaitable[Response]] | None:
        """The app's handler for ``exc``, as Starlette's exception middleware finds it (by the
        exception's classes in order; ``Exception``'s is the server error middleware's)."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = self.app.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None


@dataclass(frozen=True)
class Asked:
    """What a scoring request asks, typed (the body classes are built from the schema at start)."""

    purpose: str
    consent: str | None
    applicants: list[BaseModel]

    @classmethod
    def of(cls, body: Any, batch: bool) -> "Asked":
        # told, not probed: a missing attribute costs a pydantic model an exception
        return cls(body.purpose, body.consent_reference, body.applicants if batch else [body.applicant])


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for ``settings``; raises :class:`ServiceError` (one line) if it cannot serve safely."""
    state = ServiceState(settings)
    single_body, batch_body = request_models(state.schema, state.rules.max_batch)

    running = {"lifespans": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # a second server (or test client) on the same app shares the first one's writer and model
        running["lifespans"] += 1
        if running["lifespans"] > 1:
            try:
                yield
            finally:
                running["lifespans"] -= 1
            return
        await asyncio.to_thread(state.refresh_model)
        await asyncio.to_thread(state.writer.prune_now)
        gc.collect()  # start-up's garbage goes now, not frozen with the rest
        gc.freeze()  # what start-up made lives as long as the service: the collector stops walking it
        await state.pipeline.start(state.serving)  # forked: it shares what start-up made

        async def poll() -> None:
            while True:
                await asyncio.sleep(settings.model_poll_seconds)
                await asyncio.to_thread(state.refresh_model)
                await asyncio.to_thread(state.writer.sign_if_behind)
                await asyncio.to_thread(state.writer.maybe_prune)

        poller = asyncio.create_task(poll())
        try:
            yield
        finally:
            running["lifespans"] -= 1
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await state.pipeline.stop()
            state.engine.dispose()
            gc.unfreeze()  # a process that goes on (a test, an embedding) can collect it all again

    app = FastAPI(
        title="FedCredit scoring service",
        version="1",
        summary="Scores, reasons and decisions from the federation's shared credit-risk model; every query audited.",
        lifespan=lifespan,
    )
    app.state.service = state
    problems.install(app)
    direct = DirectRoutes(app)
    app.add_middleware(Guard, state=state, direct=direct)
    documented: dict[int | str, dict[str, Any]] = {
        code: {"model": problems.Problem, "content": {problems.PROBLEM_JSON: {}}, "description": title}
        for code, title in problems.TITLES.items()
    }
    problem_responses: dict[int | str, dict[str, Any]] = {
        code: documented[code] for code in (401, 403, 413, 422, 429, 503)
    }
    version_responses: dict[int | str, dict[str, Any]] = {**problem_responses, 404: documented[404]}
    change_responses: dict[int | str, dict[str, Any]] = {**version_responses, 409: documented[409]}

    def refuse(status: int, slug: str, detail: str, headers: dict[str, str] | None = None) -> ProblemError:
        state.metrics.refusal(slug)
        return ProblemError(status, slug, detail, headers=headers)

    async def identify(token: str | None) -> Caller:
        if not token:
            raise refuse(401, "no-token", "send a member token: Authorization: Bearer <token>", CHALLENGE)
        known, found = state.tokens.peek(token)
        if not known:  # read the database off the event loop
            found = await asyncio.to_thread(state.tokens.lookup, token, state.engine)
        if found is None:
            raise refuse(
                401,
                "bad-token",
                "the token is unknown, revoked or malformed",
                {**CHALLENGE, "WWW-Authenticate": CHALLENGE["WWW-Authenticate"] + ', error="invalid_token"'},
            )
        return found

    def may(who: Caller, *allowed: str) -> Caller:
        if who.role not in allowed:
            raise refuse(
                403,
                "wrong-role",
                f"{_a(who.role)} token cannot do this; it needs {' or '.join(_a(r) for r in allowed)} token",
            )
        return who

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        return await identify(credentials.credentials if credentials else None)

    def role(*allowed: str) -> Callable[..., Awaitable[Caller]]:
        async def check(who: Annotated[Caller, Depends(caller)]) -> Caller:
            return may(who, *allowed)

        return check

    async def member_of(authorization: bytes | None) -> Caller:
        """The scoring routes' caller, as ``Depends(role("member"))`` gives it, read straight from
        the header: FastAPI's dependency chain cost a third of a scoring request's own time."""
        scheme, token = get_authorization_scheme_param(
            authorization.decode("latin-1") if authorization is not None else None
        )
        return may(await identify(token if scheme.lower() == "bearer" else None), "member")

    def rules_of_use(who: Caller, purpose: str, consent: str | None) -> ServingModel:
        if not state.in_force():
            raise refuse(
                503, "policy-not-in-force", f"federation policy {state.federation} is not in force today"
            )
        if who.member not in state.rules.allowed_members:
            raise refuse(
                403,
                "member-not-allowed",
                f"{who.member} is not in the federation policy's scoring.allowed_members",
            )
        wait = state.limiter.take(who.member)
        if wait > 0:
            raise refuse(
                429,
                "rate-limited",
                f"{who.member} is over {state.rules.requests_per_minute} requests a minute",
                {"Retry-After": retry_after(wait)},
            )
        allowed = state.rules.purposes_for(who.member)
        if purpose not in allowed:
            raise refuse(
                403,
                "purpose-not-allowed",
                f"purpose {purpose!r} is not allowed for {who.member} (allowed: {', '.join(allowed)})",
            )
        if state.rules.require_consent_reference and not consent:
            raise refuse(
                403, "consent-required", "the federation policy requires a consent_reference on every query"
            )
        serving = state.serving
        if serving is None:
            raise refuse(503, "no-model", state.model_problem or "no active model version")
        return serving

    async def answer(
        authorization: bytes | None, raw: bytes, body_model: type[BaseModel], action: str
    ) -> bytes:
        """Check the caller and the rules of use, then score and audit in the pipeline: the answer's
        JSON, only after its audit entry is committed. The body is parsed straight from its bytes
        (one pass, in Rust), the same bytes whose digest the audit entry keeps."""
        who = await member_of(authorization)
        try:
            body: Any = body_model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {**e, "loc": ("body", *e["loc"])}
                    for e in exc.errors(include_url=False, include_context=False, include_input=False)
                ]
            ) from None
        asked = Asked.of(body, action == "score.batch")
        serving = rules_of_use(who, asked.purpose, asked.consent)
        job = Job(
            action=action,
            version_id=serving.version.id or 0,
            applicants=asked.applicants,
            member=who.member,
            purpose=asked.purpose,
            consent_reference=asked.consent or "",
            input_sha256=hashlib.sha256(raw).hexdigest(),
        )
        try:
            content = await state.pipeline.run(job)
        except AuditUnavailable:
            raise refuse(
                503,
                "audit-unavailable",
                "the query could not be recorded in the audit log, so nothing was scored; retry later",
                {"Retry-After": "1"},
            ) from None
        except ModelUnavailable:
            raise refuse(
                503, "no-model", f"model {serving.version.label} cannot be loaded; nothing was scored"
            ) from None
        except PipelineStopped:
            raise refuse(
                503, "scoring-unavailable", "the scoring pipeline has stopped; nothing was scored"
            ) from None
        return content

    async def answer_request(request: Request, answered: Answerer) -> Response:
        """FastAPI's way to the same answer (the routes Guard does not take: behind a root path)."""
        raw = await request.body()
        content = await answered(_header(request.scope, b"authorization"), raw)
        return Response(content, media_type="application/json")

    single_answer: Answerer = functools.partial(answer, body_model=single_body, action="score")
    batch_answer: Answerer = functools.partial(answer, body_model=batch_body, action="score.batch")
    decision_answer: Answerer = functools.partial(answer, body_model=single_body, action="decision")

    single_doc, batch_doc = _request_body(single_body), _request_body(batch_body)

    @app.post(
        "/v1/scores",
        response_model=ScoreResponse,
        responses=problem_responses,
        tags=["scoring"],
        openapi_extra=single_doc,
    )
    async def score_one(request: Request) -> Response:
        """Score one applicant: probability of default, points, grade, four dimension parts, reasons."""
        return await answer_request(request, single_answer)

    @app.post(
        "/v1/scores/batch",
        response_model=BatchScoreResponse,
        responses=problem_responses,
        tags=["scoring"],
        openapi_extra=batch_doc,
    )
    async def score_many(request: Request) -> Response:
        """Score up to the policy's batch size of applicants in one request (one audit entry)."""
        return await answer_request(request, batch_answer)

    @app.post(
        "/v1/decisions",
        response_model=DecisionResponse,
        responses=problem_responses,
        tags=["scoring"],
        openapi_extra=single_doc,
    )
    async def decision(request: Request) -> Response:
        """Approve, refer or decline one applicant by the policy's cut-offs, with a suggested limit and,
        unless approved, the strongest reasons against."""
        return await answer_request(request, decision_answer)

    # served by Guard ahead of FastAPI's routes for the same paths, which stay for the OpenAPI document
    direct.add("/v1/scores", score_one, single_answer)
    direct.add("/v1/scores/batch", score_many, batch_answer)
    direct.add("/v1/decisions", decision, decision_answer)

    def _summaries(session: Session) -> list[dict[str, Any]]:
        active = active_version(session, state.federation)
        return [
            {**v.summary(), "active": active is not None and v.id == active.id}
            for v in versions(session, state.federation)
        ]

    @app.get("/v1/models", response_model=ModelList, responses=problem_responses, tags=["models"])
    async def list_models(who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        """Every registered version of the federation's model; the active one marked."""
        with Session(state.engine) as session:
            return {"federation": state.federation, "versions": _summaries(session)}

    @app.get(
        "/v1/models/{version}", response_model=ModelCardOut, responses=version_responses, tags=["models"]
    )
    async def model_card(version: str, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        """One version: its registry record and its model card."""
        try:
            number = parse_version(version)
            with Session(state.engine) as session:
                found = get_version(session, state.federation, number)
                active = active_version(session, state.federation)
        except RegistryError as exc:
            raise ProblemError(404, "no-such-version", str(exc)) from None
        card_file = Path(found.model_path).with_name("model_card.json")
        card = None
        if card_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                card = json.loads(card_file.read_text(encoding="utf-8"))
        return {
            "summary": {**found.summary(), "active": active is not None and active.id == found.id},
            "card": card,
        }

    async def change(who: Caller, version: str | None) -> dict[str, Any]:
        actor = f"admin:{who.member}"
        try:
            with Session(state.engine) as session:
                if version is None:
                    target = rollback(session, state.federation, actor)
                else:
                    target = get_version(session, state.federation, parse_version(version))
                ServingModel.load(target, state.schema)  # a changed weights file is refused here
                if version is not None:
                    promote(session, state.federation, target.version, actor)
                sign_head(session, state.key)  # the change is covered by a signed head at once
                session.commit()
        except RegistryError as exc:
            raise ProblemError(409, "registry-refused", str(exc)) from None
        except Exception as exc:
            raise ProblemError(
                409, "model-refused", f"{type(exc).__name__}: the version's model file is refused"
            ) from None
        await asyncio.to_thread(state.refresh_model)
        with Session(state.engine) as session:
            return {"federation": state.federation, "versions": _summaries(session)}

    admin = Depends(role("admin"))

    @app.post(
        "/v1/models/{version}/promote", response_model=ModelList, responses=change_responses, tags=["models"]
    )
    async def promote_version(version: str, who: Annotated[Caller, admin]) -> dict[str, Any]:
        """Make a version the active one (admins)."""
        return await change(who, version)

    @app.post("/v1/models/rollback", response_model=ModelList, responses=change_responses, tags=["models"])
    async def rollback_version(who: Annotated[Caller, admin]) -> dict[str, Any]:
        """Re-activate the version that was active before the current one (admins)."""
        return await change(who, None)

    @app.get("/v1/queries", response_model=QueryList, responses=problem_responses, tags=["audit"])
    async def queries(
        who: Annotated[Caller, Depends(role("member", "auditor"))],
        member: Annotated[
            str | None, Query(max_length=200, pattern=NO_NUL, description="Auditors: one member's queries")
        ] = None,
        since: Annotated[
            dt.datetime | None, Query(description="ISO 8601; UTC when no offset is given")
        ] = None,
        until: Annotated[
            dt.datetime | None, Query(description="ISO 8601; UTC when no offset is given")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Query history, newest first: a member sees only its own; an auditor anyone's."""
        if who.role == "member":
            if member is not None and member != who.member:
                raise refuse(403, "not-your-history", f"{who.member} may read only its own query history")
            member = who.member
        with Session(state.engine) as session:
            rows = history(
                session,
                member,
                since=_stamp(since) if since else None,
                until=_stamp(until) if until else None,
                limit=limit,
            )
        return {
            "queries": [
                {
                    "ts": r.ts,
                    "member": r.member,
                    "action": r.action,
                    "purpose": r.purpose,
                    "consent_reference": r.consent_reference,
                    "model_version": r.model_version,
                    "input_sha256": r.input_sha256,
                    "applicants": r.applicants,
                    "audit_entry": r.audit_seq,
                }
                for r in rows
            ]
        }

    auditor = Depends(role("auditor"))

    @app.get("/v1/audit/entries", response_model=AuditEntries, responses=problem_responses, tags=["audit"])
    async def audit_entries(
        who: Annotated[Caller, auditor],
        member: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
        action: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
        since: Annotated[
            dt.datetime | None, Query(description="ISO 8601; UTC when no offset is given")
        ] = None,
        until: Annotated[
            dt.datetime | None, Query(description="ISO 8601; UTC when no offset is given")
        ] = None,
        after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The audit trail, oldest first, filtered by member, action and time."""
        query = (
            select(AuditEntry)
            .where(col(AuditEntry.seq) > after_seq)
            .order_by(col(AuditEntry.seq))
            .limit(limit)
        )
        if member is not None:
            query = query.where(AuditEntry.actor == f"member:{member}")
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if since is not None:
            query = query.where(AuditEntry.ts >= _stamp(since))
        if until is not None:
            query = query.where(AuditEntry.ts <= _stamp(until))
        with Session(state.engine) as session:
            rows = session.exec(query).all()
        return {"entries": [{**e.body(), "detail": e.body().get("detail"), "hash": e.hash} for e in rows]}

    @app.get(
        "/v1/audit/verify", response_model=ChainVerification, responses=problem_responses, tags=["audit"]
    )
    async def audit_verify(who: Annotated[Caller, auditor]) -> dict[str, Any]:
        """Walk the whole hash chain and its signed heads with the keys the service trusts."""

        def run() -> Any:
            with Session(state.engine) as session:
                return verify_chain(session, state.audit_keys, allow_open_run=True)

        report = await asyncio.to_thread(run)
        return {
            "intact": report.ok,
            "checked": report.checked,
            "problem": report.problem,
            "signed_seq": report.signed_seq,
            "signers": list(report.signers),
            "unsigned": report.unsigned,
        }

    @app.get("/v1/policies", response_model=PolicyList, responses=problem_responses, tags=["audit"])
    async def policies(who: Annotated[Caller, auditor]) -> dict[str, Any]:
        """The federation policy and the institutions' policies, each with its signature status."""
        federation_keys = read_public_keys(state.settings.trust)
        listed = [_status(state.settings.federation_policy, federation_keys)]
        # an institution's policy is signed by its member key; a federation policy by the consortium
        member_keys = [*(m.public_key for m in state.policy.members), *federation_keys]
        ours = state.settings.federation_policy.resolve()
        listed += [
            _status(path, member_keys) for path in state.institution_policy_files() if path.resolve() != ours
        ]
        return {"policies": listed}

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: problem_responses[503]},
        tags=["operations"],
    )
    async def readyz(request: Request) -> Any:
        """Ready to score: a verified model loaded, the database reachable, the scoring pipeline running."""
        problem = ""
        if state.serving is None:
            problem = state.model_problem
        elif not state.pipeline.alive:
            problem = "the scoring pipeline stopped"
        elif not await asyncio.to_thread(state.database_ok):
            problem = "the database cannot be reached"
        if problem:
            return problem_response(request, 503, "not-ready", problem)
        assert state.serving is not None
        return {"status": "ready", "model_version": state.serving.version.label}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> str:
        """Prometheus metrics: requests, latency, refusals, audit commit lag and backlog."""
        return state.metrics.exposition(state.pipeline.backlog)

    generated = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the request bodies the scoring routes parse themselves."""
        if app.openapi_schema is None:
            document = generated()
            _, defs = models_json_schema(
                [(single_body, "validation"), (batch_body, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` from the raw bytes, and the
    bearer token it reads from the header itself (:func:`create_app`'s ``member_of``)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "security": [{bearer.scheme_name: []}],
    }


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an auditor", "a member"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _stamp(when: dt.datetime) -> str:
    """A filter time as the audit log and query records write theirs (UTC, sortable text)."""
    return utc_stamp(when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC))


def _status(path: Any, trusted: list[str] | tuple[str, ...]) -> PolicyStatus:
    try:
        verified = verify_policy(path, trusted)
    except (PolicyError, OSError) as exc:
        return PolicyStatus(
            file=str(getattr(path, "name", path)),
            kind="unknown",
            id=None,
            version=None,
            sha256=None,
            status="refused",
            detail=str(exc).splitlines()[0],
        )
    policy = verified.policy
    return PolicyStatus(
        file=str(getattr(path, "name", path)),
        kind=policy.kind,
        id=policy.header.id,
        version=policy.header.version,
        sha256=policy.sha256,
        status="valid",
        detail=f"signed by key {key_id(verified.signed_by)}; in force {policy.header.effective}..{policy.header.expires}",
    )
