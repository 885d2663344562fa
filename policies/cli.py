"""The auditor's and compliance officer's commands: keys, policies, the audit chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from sqlmodel import Session

from policies.audit import (
    append,
    create_audit_engine,
    export_jsonl,
    has_audit_log,
    mask_url,
    open_audit_readonly,
    var_dir,
    verify_chain,
)
from policies.cli_errors import fail
from policies.cli_options import DbOption, TrustOption, database, database_errors
from policies.contributions import STATS, JoinLimits, contribution_problem
from policies.decisions import SignedRequest, TrainingRequest, evaluate_training, new_run_id, sign_request
from policies.demo_keys import demo_key_name
from policies.documents import InstitutionPolicy, Policy, PolicyError, load_policy
from policies.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    public_key_text,
    read_public_keys,
    sign_policy,
    verify_policy,
    verify_policy_of_kind,
)

console = Console()
keys_app = typer.Typer(
    help="Ed25519 signing keys, and the scoring service's member tokens.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
policy_app = typer.Typer(
    help="Sign, verify, read, compare and test compliance policies.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
audit_app = typer.Typer(
    help="Check and export the hash-chained audit log.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _trusted(trust: Path) -> tuple[str, ...]:
    try:
        keys = read_public_keys(trust)
    except (PolicyError, OSError) as exc:
        raise fail(exc) from None
    if not keys:
        raise fail(f"{trust}: no public keys here; name the keys you trust")
    return keys


KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@keys_app.command("generate")
def keys_generate(
    name: Annotated[str, typer.Argument(help="Key name: writes NAME.key (private) and NAME.pub.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the key files \\[default: the project's var/keys].")
    ] = None,
    db: DbOption = None,
) -> None:
    """Generate an Ed25519 key pair (private key readable by its owner only); audited as a key change.

    The key files and their audit entry are written together or not at all.
    """
    if not KEY_NAME.fullmatch(name):
        raise fail(
            f"key name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    url = database(db)
    out = out or var_dir() / "keys"
    for path in (out / f"{name}.key", out / f"{name}.pub"):
        if path.exists():
            raise fail(f"{path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    kid = key_id(public_key_text(key.public_key()))
    written: tuple[Path, ...] = ()
    try:
        with database_errors(url, "recording the key generation"):
            engine = create_audit_engine(url)
            try:
                with Session(engine) as session:
                    append(session, actor="keys", action="key.generate", resource=f"{name}:{kid}")
                    written = (out / f"{name}.key", out / f"{name}.pub")  # from here on, ours to remove
                    try:
                        written = generate_keypair(out, name, key=key)
                    except OSError as exc:
                        raise fail(f"writing the key files in {out} failed: {exc.strerror or exc}") from None
                    session.commit()
            finally:
                engine.dispose()
    except PolicyError as exc:  # the files appeared meanwhile: not ours
        raise fail(exc) from None
    except BaseException:
        for path in written:  # the entry was not committed: no key without its audit entry
            with suppress(OSError):  # not there (or never could be)
                path.unlink()
        raise
    private, public = written
    console.print(f"private key: {private}\npublic key:  {public}  (id {kid})", highlight=False)


@policy_app.command("sign")
def policy_sign(
    policy: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    key: Annotated[Path, typer.Option(help="Private key of the signing officer.")],
) -> None:
    """Check a policy, then write its manifest (file hashes) and the signature over the manifest."""
    try:
        manifest, signature = sign_policy(policy, key)
    except (PolicyError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"signed: {manifest}, {signature}")


@policy_app.command("verify")
def policy_verify(
    policy: Annotated[Path, typer.Argument(help="Policy TOML file (manifest and signature beside it).")],
    trust: TrustOption,
) -> None:
    """Verify signature, signer, file hash and validity dates. Exit code 2 when any check fails."""
    try:
        verified = verify_policy(policy, _trusted(trust))
    except PolicyError as exc:
        raise fail(exc) from exc
    h = verified.policy.header
    console.print(
        f"[green]valid[/]: {h.id} v{h.version}, sha256 {verified.policy.sha256}, "
        f"signed by {key_id(verified.signed_by)} at {verified.signed_at}, in force {h.effective}..{h.expires}"
    )


def _summary(policy: Policy) -> list[str]:
    h = policy.header
    lines = [
        f"{h.id} version {h.version} ({policy.kind} policy)",
        f"owner: {h.owner}",
        f"in force: {h.effective} to {h.expires}",
        f"sha256: {policy.sha256}",
    ]
    if isinstance(policy, InstitutionPolicy):
        p = policy.privacy
        lines += [
            f"institution: {policy.institution}",
            f"data may be used for: {', '.join(policy.allowed_purposes)}",
            f"schemas: {', '.join(policy.allowed_schemas)}; dimensions: {', '.join(policy.allowed_dimensions)}",
            "features: "
            + (
                "all of those dimensions"
                if "*" in policy.allowed_features
                else ", ".join(policy.allowed_features)
            ),
            f"never used: {', '.join(policy.forbidden_features) or 'nothing listed'}",
            f"at least {policy.min_local_records} local records and {policy.min_institutions_per_round} institutions per round",
            f"secure aggregation: {'required' if policy.require_secure_aggregation else 'not required'}",
            f"privacy: epsilon per run {p.max_epsilon_per_run or 'no limit set'}, lifetime budget "
            f"{p.lifetime_epsilon_budget or 'no limit set'}, delta {p.delta}",
            f"coordinators accepted: {', '.join(key_id(k) for k in policy.accepted_coordinator_keys)}",
            f"local artefacts kept {policy.retention_days} days",
        ]
    else:
        s = policy.scoring
        lines += [
            "members: "
            + ", ".join(f"{m.name} ({m.role}, key {key_id(m.public_key)})" for m in policy.members),
            f"dataset: {policy.schema} {policy.schema_version}",
            f"aggregation: {policy.strategy}, {policy.rounds} rounds (at most {policy.max_rounds}), at least {policy.min_institutions} institutions",
            f"secure aggregation: {'on' if policy.secure_aggregation else 'off'}; epsilon {policy.epsilon or 'not set'}, delta {policy.delta}",
            f"scoring: {', '.join(s.allowed_members)} may query for {', '.join(s.allowed_purposes)}; consent reference "
            f"{'required' if s.require_consent_reference else 'not required'}; {s.requests_per_minute} requests/minute",
        ]
    return lines


@policy_app.command("show")
def policy_show(policy: Annotated[Path, typer.Argument(help="Policy TOML file.")]) -> None:
    """A readable summary of a policy (does not check its signature: use `policy verify`)."""
    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        raise fail(exc) from exc
    for line in _summary(loaded):
        console.print(line, highlight=False)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out |= _flatten(getattr(value, f.name), f"{prefix}{f.name}.")
        return out
    return {prefix.rstrip("."): value}


def _shown(value: Any) -> str:
    """A setting as a policy file writes it: dates as 2027-12-31, not datetime.date(2027, 12, 31)."""
    return value.isoformat() if isinstance(value, dt.date) else repr(value)


def describe_changes(old: Policy, new: Policy) -> list[str]:
    """What changed between two policies, one sentence per setting."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key == "sha256" or a.get(key) == b.get(key):
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, tuple) and isinstance(y, tuple):
            added, removed = [v for v in y if v not in x], [v for v in x if v not in y]
            parts = ([f"added {added}"] if added else []) + ([f"removed {removed}"] if removed else [])
            lines.append(f"{key}: {'; '.join(parts) or 'reordered'}")
        else:
            lines.append(f"{key}: {_shown(x)} -> {_shown(y)}")
    return lines


@policy_app.command("diff")
def policy_diff(
    old: Annotated[Path, typer.Argument(help="Earlier policy.")],
    new: Annotated[Path, typer.Argument(help="Later policy.")],
) -> None:
    """What changed between two versions of a policy, in words."""
    try:
        before, after = load_policy(old), load_policy(new)
        if before.kind != after.kind:
            raise PolicyError(
                f"{new}: is a {after.kind} policy, {old} a {before.kind} policy; diff compares two versions of one policy"
            )
        changes = describe_changes(before, after)
    except PolicyError as exc:
        raise fail(exc) from exc
    for line in changes or ["no change in any setting"]:
        console.print(line, highlight=False)


@policy_app.command("request")
def policy_request(
    out: Annotated[Path, typer.Argument(help="Where to write the signed request (JSON).")],
    key: Annotated[Path, typer.Option(help="Coordinator private key.")],
    purpose: Annotated[str, typer.Option()] = "credit_underwriting",
    schema: Annotated[str, typer.Option(help="Schema name or TOML file the run trains on.")] = "sme",
    schema_version: Annotated[
        str | None, typer.Option(help="\\[default: the schema's version]", show_default=False)
    ] = None,
    feature: Annotated[list[str] | None, typer.Option(help="column:dimension, repeatable.")] = None,
    min_institutions: Annotated[int, typer.Option()] = 3,
    secure_aggregation: Annotated[
        bool, typer.Option(help="The run uses SecAgg+ (as `simulate` does by default).")
    ] = True,
    epsilon: Annotated[float | None, typer.Option()] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write a signed training request, e.g. to try `policy explain` on it."""
    features = []
    for f in feature or ["monthly_revenue:operations"]:
        column, sep, dimension = f.partition(":")
        if not sep or not column or not dimension:
            raise fail(f"--feature {f!r}: write column:dimension, e.g. monthly_revenue:operations")
        features.append((column, dimension))
    if out.is_dir():
        raise fail(f"{out}: is a folder; give the request file's path")
    if out.exists() and not force:
        raise fail(f"{out}: exists; pass --force to replace it")
    if _schema_identity is not None:
        try:
            name, version = _schema_identity(schema)
        except Exception as exc:  # the schema reader's own error, whatever its type
            raise fail(f"--schema {schema}: {exc}") from None
        if schema_version is not None and schema_version != version:
            raise fail(f"--schema-version {schema_version}: schema {name} is version {version}")
        schema, schema_version = name, version
    run_id = new_run_id()
    try:
        request = TrainingRequest(
            run_id=run_id,
            purpose=purpose,
            schema=schema,
            schema_version=schema_version or "1.0.0",
            features=tuple(features),
            strategy="fedavg",
            rounds=10,
            min_institutions=min_institutions,
            secure_aggregation=secure_aggregation,
            epsilon=epsilon,
        )
        signed = sign_request(request, load_private_key(key)).to_wire()
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            tmp.write_bytes(signed)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    except (PolicyError, ValueError) as exc:
        raise fail(f"policy request: {exc}") from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}") from None
    console.print(f"wrote {out} (run id {run_id})", highlight=False)


@policy_app.command("explain")
def policy_explain(
    policy: Annotated[
        Path, typer.Argument(help="Institution policy TOML file (signed, as the node reads it).")
    ],
    request: Annotated[
        Path, typer.Option(help="Signed training request (JSON, as `policy request` writes).")
    ],
    trust: TrustOption,
    records: Annotated[int, typer.Option(min=0, help="Local records the node would train on.")] = 10_000,
    today: Annotated[str | None, typer.Option(help="Evaluate as of this date (YYYY-MM-DD).")] = None,
) -> None:
    """The decision a node would take on a request, with the rules that fired.

    Exit code 0 for PERMIT, 1 for DENY, 2 when no decision can be taken.

    The policy is verified first, as the node does: unsigned, modified, untrusted or out of force
    means no decision (exit code 2).
    """
    try:
        day = dt.date.fromisoformat(today) if today else None
        loaded = verify_policy_of_kind(policy, _trusted(trust), InstitutionPolicy, "explain", today=day)[0]
        signed = SignedRequest.from_wire(request.read_bytes())
        decision = evaluate_training(loaded, signed, records, today=day)
        # as the first message of a new run: a stale request or one from the future is refused too
        limits = JoinLimits(loaded.max_request_age_minutes, loaded.max_runs_per_day)
        joining = contribution_problem(signed, STATS, 0, None, (), dt.datetime.now(dt.UTC), limits)
        if decision.allowed and joining is not None:
            decision = replace(decision, allowed=False, rules=(joining[0],), reasons=(joining[1],))
    except (PolicyError, ValueError, OSError) as exc:
        raise fail(exc) from None
    colour = "green" if decision.allowed else "red"
    console.print(
        f"[bold {colour}]{decision.effect.upper()}[/] under {decision.policy_id} v{decision.policy_version}"
    )
    for rule, reason in zip(decision.rules, decision.reasons or ("",) * len(decision.rules), strict=True):
        console.print(f"  {rule}" + (f": {reason}" if reason else ""), highlight=False)
    console.print(
        f"policy sha256 {decision.policy_sha256}\nrequest sha256 {decision.input_sha256}", highlight=False
    )
    if not decision.allowed:
        raise typer.Exit(code=1)  # 0 PERMIT, 1 DENY, 2 no decision (a bad policy, request or file)


@audit_app.command("verify")
def audit_verify(
    trust: Annotated[
        list[Path],
        typer.Option(
            help="Public key file, or folder of .pub files, whose signed chain heads you trust; repeatable."
        ),
    ],
    db: DbOption = None,
    expect_empty: Annotated[
        bool, typer.Option("--expect-empty", help="A missing or empty log is correct here.")
    ] = False,
    allow_open_run: Annotated[
        bool,
        typer.Option(
            "--allow-open-run",
            help="Accept unsigned entries at the end when they belong to a run still in progress.",
        ),
    ] = False,
) -> None:
    """Check every hash and every signed head; names the first entry modified, deleted, inserted or
    reordered, a head signed by an untrusted key, and entries no signed head covers. Exit 2 if not intact.
    Opens the database read-only."""
    url = database(db)
    trusted = tuple(key for source in trust for key in _trusted(source))
    with database_errors(url, "reading the audit log"):
        engine = open_audit_readonly(url)
        try:
            with Session(engine) as session:
                report = verify_chain(
                    session, trusted, allow_empty=expect_empty, allow_open_run=allow_open_run
                )
        finally:
            engine.dispose()
    if not report.ok:
        hint = (
            " (pass --expect-empty if that is right)"
            if report.checked == 0 and report.first_bad_seq is None
            else ""
        )
        raise fail(f"broken: {report.problem}{hint} ({report.checked} entries checked in {mask_url(url)})")
    if report.checked == 0:
        console.print(
            f"[green]intact[/]: 0 entries in {escape(mask_url(url))} (empty, as expected)",
            highlight=False,
            soft_wrap=True,
        )
        return
    tail = (
        f"; {report.unsigned} unsigned entries of open run(s) {', '.join(report.open_runs)} after it"
        if report.unsigned
        else ""
    )
    demo = {key_id(k): name for k in trusted if (name := demo_key_name(k))}
    signers = [f"{k} (DEMO key {demo[k]})" if k in demo else k for k in report.signers]
    console.print(
        f"[green]intact[/]: {report.checked} entries checked; last signed head at entry {report.signed_seq} "
        f"({report.signed_hash}) by key {report.signed_key}; signers: {', '.join(signers)}" + escape(tail),
        highlight=False,
        soft_wrap=True,
    )


@audit_app.command("export")
def audit_export(
    jsonl: Annotated[Path, typer.Option("--jsonl", help="Output file ('-' for standard output).")],
    db: DbOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")] = False,
) -> None:
    """Write the whole chain as JSON lines, one entry per line, in sequence order (read-only).

    The count goes to standard error, so standard output holds only the JSON lines."""
    url = database(db)
    to_stdout = str(jsonl) == "-"
    if not to_stdout:
        if jsonl.is_dir():
            raise fail(f"{jsonl}: is a folder; give the JSONL file's path")
        if not jsonl.parent.is_dir():
            raise fail(f"{jsonl}: {jsonl.parent} is not a folder")
        if jsonl.exists() and not force:
            raise fail(f"{jsonl}: exists; pass --force to replace it")
    with database_errors(url, "reading the audit log"):
        engine = open_audit_readonly(url)
        try:
            with Session(engine) as session:
                if not has_audit_log(session):
                    raise fail(f"no audit log in {mask_url(url)}")
                if to_stdout:
                    count = export_jsonl(session, sys.stdout)
                else:
                    tmp = jsonl.with_name(f".{jsonl.name}.tmp")
                    try:
                        with tmp.open("w", encoding="utf-8") as out:
                            count = export_jsonl(session, out)
                        tmp.replace(jsonl)
                    except OSError as exc:
                        raise fail(f"cannot write {jsonl}: {exc.strerror or exc}") from None
                    finally:
                        with suppress(OSError):
                            tmp.unlink(missing_ok=True)
        finally:
            engine.dispose()
    typer.echo(f"exported {count} entries", err=True)


# How a schema reference (name or file) becomes its (name, version); given by the root command,
# since policies/ reads no schema itself. Without it, policy request takes --schema as a name.
_schema_identity: Callable[[str], tuple[str, str]] | None = None


def register(app: typer.Typer, schema_identity: Callable[[str], tuple[str, str]] | None = None) -> None:
    global _schema_identity
    _schema_identity = schema_identity
    app.add_typer(keys_app, name="keys")
    app.add_typer(policy_app, name="policy")
    app.add_typer(audit_app, name="audit")
