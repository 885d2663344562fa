"""The node's compliance check, as a Flower client mod: no permit, no update.

Before every training, evaluation or statistics message the guard

1. loads the node's policy only if it is signed by a key the node trusts,
   unmodified and in force (once per process; a failure denies every message);
2. verifies the coordinator's signature on the run's training request;
3. evaluates the request against the policy;
4. writes the decision to the node's audit log;
5. on deny, answers with an error naming the rules, so nothing derived from the
   data leaves the node, and the coordinator learns why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from clients.node_data import CACHED_NODES, load_node_data
from clients.settings import NodeSettings
from federation import protocol as P
from federation.errors import DataValidationError, FedCreditError
from federation.protocol import NODE_DATA_INVALID
from policies.audit import append, create_audit_engine, lock_chain, sign_head
from policies.budget import ensure_ledger, spent_elsewhere
from policies.contributions import EVALUATE, TRAIN, JoinLimits, claim_contribution
from policies.decisions import Decision, Refusal, SignedRequest, evaluate_training
from policies.documents import InstitutionPolicy, PolicyError
from policies.signing import load_private_key, manifest_paths, read_public_keys, verify_policy_of_kind

POLICY_DENIED = 4030  # Error code of a refusal by the node's policy
NodeConfigResolver = Callable[[Context], Mapping[str, str]]


def node_audit_url(cfg: Mapping[str, str], institution: str) -> str:
    return NodeSettings().node_audit_url(institution, cfg)


@lru_cache(maxsize=CACHED_NODES)
def node_engine(url: str) -> Engine:
    """The node's audit database (one engine per node and process: an engine compiles each
    statement once); on SQLite, the file is opened per transaction, not held open."""
    return create_audit_engine(url, keep_sqlite_connections=False)


def node_audit(cfg: Mapping[str, str]) -> tuple[str, Engine]:
    """The node's institution name and its audit database."""
    institution = cfg.get(P.NODE_NAME) or Path(cfg.get(P.NODE_DATA_PATH, "node")).name
    return institution, node_engine(node_audit_url(cfg, institution))


@lru_cache(maxsize=CACHED_NODES)
def _load_node_key(path: str) -> Ed25519PrivateKey:
    return load_private_key(path)


def node_key(cfg: Mapping[str, str]) -> Ed25519PrivateKey | None:
    """The institution's own signing key (node config ``node-key``): signs its replies and audit heads."""
    path = cfg.get(P.NODE_KEY, "")
    return _load_node_key(path) if path else None


def node_record(engine: Engine, key: Ed25519PrivateKey | None, **fields: Any) -> None:
    """Append one audit entry and sign the new head with the node's key, in one transaction."""
    with Session(engine) as session:
        append(session, **fields)
        if key is not None:
            sign_head(session, key)
        session.commit()


def contribution_of(msg: Message, config: Mapping[str, object]) -> tuple[str, int]:
    """What the message asks the node to send, and for which round (0: once per run)."""
    round_ = config.get(P.ROUND, 0)
    round_ = round_ if isinstance(round_, int) and not isinstance(round_, bool) else -1
    if msg.metadata.message_type == MessageType.EVALUATE:
        return EVALUATE, round_
    phase = config.get(P.PHASE)
    if phase == P.PHASE_TRAIN:
        return TRAIN, round_
    return (str(phase), 0) if phase in (P.PHASE_STATS, P.PHASE_REFERENCE) else (str(phase), round_)


def _refusal(
    key: Ed25519PrivateKey | None,
    msg: Message,
    institution: str,
    rules: tuple[str, ...],
    reasons: tuple[str, ...],
    policy_sha256: str = "",
    input_sha256: str = "",
) -> Refusal:
    """A refusal the coordinator can attribute: signed with the node's key when it has one."""
    refusal = Refusal(institution, rules, reasons, policy_sha256, input_sha256, msg.metadata.dst_node_id)
    return refusal.signed(key) if key is not None else refusal


def data_problem_summary(exc: FedCreditError) -> str:
    """What the coordinator may learn of a node's bad data: which columns, never a value or a row."""
    if not isinstance(exc, DataValidationError):
        return f"the node cannot load its data ({type(exc).__name__}); the details stay at the node"
    # a problem's message names counts, never a value; its row numbers stay at the node
    whole_file = [p.message for p in exc.problems if not p.column]
    columns = sorted({p.column for p in exc.problems if p.column})
    parts = whole_file + ([f"problems in column(s) {', '.join(columns)}"] if columns else [])
    return f"the node's data fails its schema: {'; '.join(parts) or 'see the node'}"


def _file_stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def verified_policy(policy_path: str, trust_path: str) -> InstitutionPolicy:
    """The node's policy, verified again whenever the policy, its manifest, signature or trust file change."""
    files = (Path(policy_path), *manifest_paths(Path(policy_path)), Path(trust_path)) if policy_path else ()
    return _verified_policy(policy_path, trust_path, tuple(_file_stamp(f) for f in files))


@lru_cache(maxsize=CACHED_NODES)
def _verified_policy(
    policy_path: str, trust_path: str, _stamps: tuple[tuple[int, int], ...]
) -> InstitutionPolicy:
    if not policy_path:
        raise PolicyError(
            "the node has no policy configured (node config 'policy'); without a policy nothing is permitted"
        )
    if not trust_path:
        raise PolicyError("the node trusts no policy signing key (node config 'trusted-policy-keys')")
    return verify_policy_of_kind(policy_path, read_public_keys(trust_path), InstitutionPolicy, "a node")[0]


def instruction_config(msg: Message) -> ConfigRecord | None:
    """The coordinator's fit/evaluate config in ``msg``; None for a SecAgg+ key-exchange stage."""
    prefix = "fitins" if msg.metadata.message_type == MessageType.TRAIN else "evaluateins"
    return msg.content.config_records.get(f"{prefix}.config")


def _config(msg: Message) -> Mapping[str, object]:
    if msg.metadata.message_type == MessageType.TRAIN:
        return compat.recorddict_to_fitins(msg.content, keep_input=True).config
    return compat.recorddict_to_evaluateins(msg.content, keep_input=True).config


class PolicyGuard:
    """A Flower mod; ``resolve`` gives the node config (real or simulated)."""

    def __init__(self, resolve: NodeConfigResolver) -> None:
        self.resolve = resolve

    def decide(self, msg: Message, ctxt: Context) -> tuple[Decision | None, Refusal | None]:
        cfg = self.resolve(ctxt)
        institution, engine = node_audit(cfg)
        key = node_key(cfg)
        actor = f"node:{institution}"
        config = _config(msg)
        raw = config.get(P.TRAINING_REQUEST)
        try:
            if not isinstance(raw, bytes):
                raise ValueError("the message carries no signed training request")
            signed: SignedRequest | None = SignedRequest.from_wire(raw)
            request_error = ""
        except ValueError as exc:
            signed, request_error = None, str(exc)
        digest = "" if signed is None else signed.digest  # ties a refusal to the run it answers

        def refuse(
            action: str, resource: str, rule: str, reason: str, policy_sha256: str = ""
        ) -> tuple[None, Refusal]:
            node_record(
                engine,
                key,
                actor=actor,
                action=action,
                resource=resource,
                decision="deny",
                rules=[rule],
                policy_sha256=policy_sha256,
                input_sha256=digest,
            )
            return None, _refusal(key, msg, institution, (rule,), (reason,), policy_sha256, digest)

        try:
            policy = verified_policy(cfg.get(P.NODE_POLICY, ""), cfg.get(P.NODE_TRUSTED_POLICY_KEYS, ""))
        except PolicyError as exc:
            return refuse("node.policy.load", cfg.get(P.NODE_POLICY, ""), "deny.no_valid_policy", str(exc))
        if signed is None:
            return refuse("train.decide", "?", "deny.no_request", request_error, policy.sha256)
        try:
            records = len(load_node_data(cfg[P.NODE_DATA_PATH], cfg[P.NODE_SCHEMA], institution).train)
        except FedCreditError as exc:
            return refuse(
                "node.data.load", cfg.get(P.NODE_DATA_PATH, ""), NODE_DATA_INVALID, data_problem_summary(exc)
            )
        kind, round_ = contribution_of(msg, config)
        limits = JoinLimits(policy.max_request_age_minutes, policy.max_runs_per_day)
        ensure_ledger(engine)
        with Session(engine) as session:
            # under the chain's write lock: what other runs spent, the decision, the claim
            # and its audit entry are one transaction, so two runs cannot both pass the budget
            lock_chain(session)
            decision = evaluate_training(
                policy,
                signed,
                records,
                epsilon_spent_elsewhere=spent_elsewhere(session, institution, signed.request.run_id),
            )
            try:
                problem = (
                    claim_contribution(
                        session,
                        institution=institution,
                        signed=signed,
                        kind=kind,
                        round_=round_,
                        limits=limits,
                    )
                    if decision.allowed
                    else None
                )
            except IntegrityError:
                session.rollback()
                problem = ("deny.contribution_repeated", f"{kind} {round_} was claimed concurrently")
            if problem is not None:
                decision = replace(decision, allowed=False, rules=(problem[0],), reasons=(problem[1],))
            append(
                session,
                actor=actor,
                action=f"{msg.metadata.message_type}.decide",
                resource=f"{signed.request.run_id}/{kind}" + (f"/round-{round_}" if round_ else ""),
                decision=decision.effect,
                rules=decision.rules,
                policy_sha256=decision.policy_sha256,
                input_sha256=decision.input_sha256,
            )
            if key is not None:
                sign_head(session, key)
            session.commit()
        if decision.allowed:
            return decision, None
        return decision, _refusal(
            key,
            msg,
            institution,
            decision.rules,
            decision.reasons,
            decision.policy_sha256,
            decision.input_sha256,
        )

    def __call__(
        self, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if msg.metadata.message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
            return call_next(msg, ctxt)
        if instruction_config(msg) is None:
            # a secure-aggregation key-exchange stage: no data is touched; the stage that
            # trains (and would send the masked update) carries the instructions and is checked
            return call_next(msg, ctxt)
        _, refusal = self.decide(msg, ctxt)
        if refusal is not None:
            return Message(Error(code=POLICY_DENIED, reason=refusal.to_reason()), reply_to=msg)
        return call_next(msg, ctxt)
