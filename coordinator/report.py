"""The run report: JSON with per-round and per-institution metrics, the model, a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve
from sqlmodel import Session

from coordinator.client_dp import client_level_epsilon
from coordinator.model_card_document import card_files, write_card
from coordinator.run_settings import RunSettings
from coordinator.server_app import RunOutcome, coordinator_actor
from federation.metrics import score_metrics
from federation.model import save_model
from federation.model_card import ModelCard, schema_sha256
from federation.schema import resolve_schema
from policies.audit import append, create_audit_engine, sign_head
from policies.registry import Registration, register
from policies.signing import load_private_key

REPORT_FILE = "report.json"
MODEL_FILE = "model.pt"
PLOT_FILE = "report.png"
DEMO_NOTICE = (
    "DEMO run: signed with FedCredit's published demo keys (policies/examples/keys), "
    "which anyone can sign with; never use it for real data"
)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def settings_dict(settings: RunSettings) -> dict[str, Any]:
    return {
        "schema": settings.schema,
        "rounds": settings.rounds,
        "strategy": settings.strategy,
        "proximal_mu": settings.proximal_mu if settings.strategy == "fedprox" else None,
        "local_epochs": settings.train.epochs,
        "batch_size": settings.train.batch_size,
        "learning_rate": settings.train.learning_rate,
        "hidden": settings.model.hidden,
        "embedding_dim": settings.model.embedding_dim,
        "seed": settings.seed,
        "min_institutions": settings.min_institutions,
        "members": [name for name, _ in settings.members],
        "demo_keys": settings.demo_keys,
        "epsilon": settings.epsilon,
        "delta": settings.delta,
        "max_grad_norm": settings.max_grad_norm if settings.epsilon is not None else None,
        "secure_aggregation": settings.secure_aggregation,
        "secure_aggregation_shares": settings.secure_aggregation_shares,
        "reconstruction_threshold": settings.reconstruction_threshold,
        "client_dp": None
        if settings.client_dp is None
        else {
            "noise_multiplier": settings.client_dp.noise_multiplier,
            "clipping_norm": settings.client_dp.clipping_norm,
            "epsilon": client_level_epsilon(settings.client_dp, settings.rounds, settings.delta),
            "delta": settings.delta,
        },
    }


def contributing_institutions(outcome: RunOutcome) -> tuple[str, ...]:
    """The institutions whose update reached the model: at least one training round with one.

    Only a training (fit) reply sets ``train_rows`` and a round's ``train_loss``; a node that
    only evaluated, or whose every fit failed, has neither.
    """
    return tuple(
        sorted(
            name
            for name, inst in outcome.log.institutions.items()
            if inst.get("train_rows", 0) > 0 or any("train_loss" in r for r in inst.get("rounds", []))
        )
    )


def model_card(
    run_id: str, settings: RunSettings, outcome: RunOutcome, final: dict[str, Any] | None
) -> ModelCard:
    """The card the model file and the report carry (final test metrics: finite ones only)."""
    schema = resolve_schema(settings.schema)
    metrics = {
        k: float(v)
        for k, v in (final or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return ModelCard(
        run_id=run_id,
        schema_name=schema.name,
        schema_version=schema.version,
        schema_sha256=schema_sha256(schema),
        federation_policy_sha256=settings.federation_policy_sha256,
        training_request_sha256=outcome.request_digest,
        institutions=contributing_institutions(outcome),
        metrics=metrics,
        demo=settings.demo_keys,
    )


def registration(
    model_path: Path, model_sha256: str, card: ModelCard, settings: RunSettings, outcome: RunOutcome
) -> Registration:
    """What the model registry records of this run's model."""
    per_institution: dict[str, dict[str, float]] = {}
    spent: list[float] = []
    for name, inst in outcome.log.institutions.items():
        last = next((r for r in reversed(inst.get("rounds", [])) if r.get("auc") is not None), None)
        if last is not None:
            per_institution[name] = {"holdout_auc": float(last["auc"])}
        spent += [float(r["epsilon_spent"]) for r in inst.get("rounds", []) if "epsilon_spent" in r]
    # an institution's policy digest, as its node reported it with its signed replies
    policies = {name: inst.get("policy_sha256") for name, inst in outcome.log.institutions.items()}
    return Registration(
        federation=settings.federation_id,
        run_id=card.run_id,
        model_path=str(model_path.resolve()),
        model_sha256=model_sha256,
        schema_name=card.schema_name,
        schema_version=card.schema_version,
        schema_sha256=card.schema_sha256 or "",
        federation_policy_sha256=settings.federation_policy_sha256 or "",
        institutions=tuple((name, policies.get(name)) for name in card.institutions),
        rounds=settings.rounds,
        metrics={"global": dict(card.metrics), "institutions": per_institution},
        epsilon=max(spent) if spent else None,
        demo=settings.demo_keys,
    )


def write_report(
    run_dir: Path, run_id: str, settings: RunSettings, outcome: RunOutcome, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write ``report.json``, ``model.pt`` and ``report.png`` into ``run_dir``; returns the report."""
    assert outcome.model is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    final = None
    if outcome.test_scores is not None and outcome.test_labels is not None:
        final = score_metrics(outcome.test_labels, outcome.test_scores)
    report = _json_safe(
        {
            "run_id": run_id,
            "demo": DEMO_NOTICE if settings.demo_keys else None,
            "settings": settings_dict(settings),
            "final_test_metrics": final,
            "rounds": outcome.log.central,
            "institutions": outcome.log.institutions,
            "failures": outcome.log.failures,
            **extra,
        }
    )
    card = model_card(run_id, settings, outcome, final)
    model_sha256 = save_model(outcome.model, run_dir / MODEL_FILE, card)
    report["model"] = {"file": MODEL_FILE, "sha256": model_sha256, "card": card.to_dict()}
    with Session(create_audit_engine(settings.audit_url)) as session:  # the registration, signed
        append(
            session,
            actor=coordinator_actor(settings),
            action="model.register",
            resource=f"{run_id}/{MODEL_FILE}",
            input_sha256=model_sha256,
        )
        version = register(
            session,
            registration(run_dir / MODEL_FILE, model_sha256, card, settings, outcome),
            coordinator_actor(settings),
        )
        report["model"]["version"] = version.label
        report["model"]["federation"] = version.federation
        sign_head(session, load_private_key(settings.coordinator_key))
        session.commit()
    plot_run(run_dir / PLOT_FILE, outcome)
    document = write_card(
        run_dir, report, outcome, resolve_schema(settings.schema), purposes=(settings.purpose,)
    )
    report["card_files"] = card_files(document)  # the model card document, its Markdown and plots
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    return report


def plot_run(path: Path, outcome: RunOutcome) -> None:
    """Left: test AUC and each institution's holdout AUC per round. Right: final ROC curve."""
    fig, (ax_auc, ax_roc) = plt.subplots(1, 2, figsize=(11, 4.2))
    rounds = [r["round"] for r in outcome.log.central if "auc" in r]
    if rounds:
        ax_auc.plot(
            rounds, [r["auc"] for r in outcome.log.central if "auc" in r], "k-o", lw=2, label="test set"
        )
    for name, inst in sorted(outcome.log.institutions.items()):
        pts = [(r["round"], r["auc"]) for r in inst["rounds"] if r.get("auc") is not None]
        if pts:
            ax_auc.plot(*zip(*pts, strict=True), lw=1, alpha=0.7, label=f"{name} (holdout)")
    ax_auc.set(xlabel="round", ylabel="AUC", title="AUC per round")
    ax_auc.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax_auc.grid(alpha=0.3)
    ax_auc.legend(fontsize=7)
    if outcome.test_scores is not None and outcome.test_labels is not None:
        fpr, tpr, _ = roc_curve(outcome.test_labels, outcome.test_scores)
        auc = roc_auc_score(outcome.test_labels, outcome.test_scores)
        ax_roc.plot(fpr, tpr, lw=2, label=f"federated model (AUC {auc:.4f})")
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test set")
    ax_roc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
