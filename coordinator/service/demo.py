"""The demo's last act: start the scoring service, score and decide on an applicant over HTTP, show it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from coordinator.service.app import create_app
from coordinator.service.pipeline import keep_from_pipeline
from coordinator.service.settings import ServiceSettings
from policies.audit import create_audit_engine
from policies.documents import load_policy
from policies.member_keys import issue, revoke
from policies.registry import active_version, promote, versions

BAR_WIDTH = 24


class BackgroundServer:
    """uvicorn serving ``app`` on loopback in a thread, for as long as the ``with`` lasts.

    It listens on a port of its own (``port``), bound here before the server starts: a port
    chosen first and bound later could be taken in between by any other process."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        keep_from_pipeline(self.socket)
        self.port = int(self.socket.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the scoring service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


def promote_latest(url: str, federation: str, actor: str) -> str:
    """Make the federation's newest version the active one (the demo acts as the consortium's admin)."""
    with Session(create_audit_engine(url)) as session:
        newest = versions(session, federation)[-1]
        active = active_version(session, federation)
        if active is None or active.version != newest.version:
            promote(session, federation, newest.version, actor)
        session.commit()
        return newest.label


@contextmanager
def demo_token(url: str, policy_path: Path, member: str) -> Iterator[str]:
    """A member token for the demo's calls, revoked when they are done."""
    with Session(create_audit_engine(url), expire_on_commit=False) as session:
        token, row = issue(session, load_policy(policy_path), member, "member", actor="demo")  # type: ignore[arg-type]
        session.commit()
    try:
        yield token
    finally:
        with Session(create_audit_engine(url)) as session:
            revoke(session, row.key_id, actor="demo")
            session.commit()


def _bar(value: float, scale: float) -> str:
    width = round(abs(value) / scale * BAR_WIDTH) if scale > 0 else 0
    colour = "red" if value > 0 else "green"
    return f"[{colour}]{'█' * max(width, 1 if value else 0)}[/]"


def percent(p: float) -> str:
    """A probability as a percentage with enough digits to tell small ones apart."""
    return f"{p:.3%}" if p < 0.001 else f"{p:.2%}"


def render_decision(console: Console, answer: dict[str, Any], requested: float | None) -> None:
    """Score, grade, the four dimensions as bars, the reasons and the decision, for a loan officer."""
    score = answer["score"]
    console.print(
        f"[bold]{score['id']}[/]: probability of default [bold]{percent(score['probability_of_default'])}[/], "
        f"points [bold]{score['points']}[/], grade [bold]{score['grade']}[/]   "
        f"(model {answer['federation']} {answer['model']['version']}, audit entry {answer['audit_entry']})",
        highlight=False,
    )
    parts = score["contributions"]
    scale = max((abs(v) for v in parts.values()), default=1.0)
    bars = Table(title="what each dimension adds to the risk (green: safer than the average borrower)")
    bars.add_column("dimension")
    bars.add_column("logit", justify="right")
    bars.add_column("", min_width=BAR_WIDTH)
    for name, value in parts.items():
        bars.add_row(name, f"{value:+.3f}", _bar(value, scale))
    console.print(bars)
    reasons = Table(title="reasons, strongest first")
    reasons.add_column("reason")
    reasons.add_column("feature")
    reasons.add_column("effect")
    for r in score["reasons"]:
        effect = (
            "[green]in the applicant's favour[/]" if r["direction"] == "lowers_risk" else "[red]against[/]"
        )
        reasons.add_row(r["text"], f"{r['feature']} = {r['value']}", effect)
    console.print(reasons)
    asked = f" of {requested:,.0f} asked" if requested else ""
    console.print(
        f"decision: [bold]{answer['decision'].upper()}[/], suggested limit {answer['suggested_limit']:,.0f}{asked}",
        highlight=False,
    )
    for r in answer["adverse_reasons"]:
        console.print(f"  adverse-action reason: {r['text']} ({r['feature']})", highlight=False)


def serve_and_decide(
    console: Console,
    settings: ServiceSettings,
    member: str,
    applicant: dict[str, Any],
    purpose: str = "credit_underwriting",
    consent_reference: str = "demo-consent-0001",
) -> dict[str, Any]:
    """Start the service, score and decide on ``applicant`` as ``member`` over HTTP; returns the decision."""
    app = create_app(settings)
    body = {"purpose": purpose, "consent_reference": consent_reference, "applicant": applicant}
    with (
        demo_token(settings.audit_url, settings.federation_policy, member) as token,
        BackgroundServer(app) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http,
    ):
        headers = {"Authorization": f"Bearer {token}"}
        console.print(
            f"scoring service on http://127.0.0.1:{server.port}; {member} calls it with a member token"
        )
        for attempt in range(100):  # the model loads as the service starts
            if http.get("/readyz").status_code == 200:
                break
            time.sleep(0.1 * (attempt < 99))
        scored = http.post("/v1/scores", json=body, headers=headers)
        scored.raise_for_status()
        decided = http.post("/v1/decisions", json=body, headers=headers)
        decided.raise_for_status()
    answer: dict[str, Any] = decided.json()
    requested = applicant.get("requested_amount")
    render_decision(console, answer, float(requested) if isinstance(requested, int | float) else None)
    return answer


def applicant_from_file(path: Path) -> dict[str, Any]:
    """The first applicant of a CSV file as JSON values (empty cells become null)."""
    import pandas as pd

    row = pd.read_csv(path, nrows=1, dtype={"business_id": str}).iloc[0]
    return {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
