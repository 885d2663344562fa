"""The model card document of one trained model version: ``model_card.json``, ``model_card.md``, plots.

Its sections follow Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): model
details, intended use, factors, metrics, evaluation data, training data, ethical
considerations, caveats and recommendations. Everything comes from the run report
(``report.json``), the schema the model was trained on, the final model's test-set scores
and the per-group fairness figures the nodes computed on their holdout rows
(:mod:`federation.fairness`). The short provenance card inside the model file
(:class:`federation.model_card.ModelCard`) is another thing: this document cites it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from federation.fairness import MISSING, protected_attributes
from federation.model_card import schema_sha256
from federation.schema import Schema

CARD_JSON: Final = "model_card.json"
CARD_MARKDOWN: Final = "model_card.md"
ROC_PLOT: Final = "card_roc.png"
CALIBRATION_PLOT: Final = "card_calibration.png"
AUC_ROUNDS_PLOT: Final = "card_auc_rounds.png"
FAIRNESS_PLOT: Final = "card_fairness.png"
CARD_FORMAT: Final = "fedcredit-model-card/1"
CALIBRATION_BINS: Final = 10  # equal-count bins, as federation.metrics' ECE uses
# a gap at or above these is flagged in the ethical considerations
APPROVAL_GAP_FLAG: Final = 0.10
AUC_GAP_FLAG: Final = 0.05
FOUR_FIFTHS: Final = 0.8  # lowest over highest approval rate below this: the four-fifths rule's flag
ECE_FLAG: Final = 0.05
FIGURES: Final = ("share", "default_rate", "approval_rate", "auc")
GAP_FIGURES: Final = ("approval_rate", "auc", "default_rate")

# (document key, Markdown heading), in Mitchell et al.'s order
SECTIONS: Final = (
    ("model_details", "Model details"),
    ("intended_use", "Intended use"),
    ("factors", "Factors"),
    ("metrics", "Metrics"),
    ("evaluation_data", "Evaluation data"),
    ("training_data", "Training data"),
    ("ethical_considerations", "Ethical considerations"),
    ("caveats_and_recommendations", "Caveats and recommendations"),
)
OUT_OF_SCOPE: Final = (
    "marketing, or any purpose the federation policy does not allow (marketing is never allowed)",
    "automated decisions without a person reviewing every decline",
    "applicant populations unlike the training data: consumers, large corporates, other countries, "
    "markets or economic conditions the member institutions did not lend in",
    "scoring on a schema other than the one named here, or with columns outside its ranges",
)
METRIC_DEFINITIONS: Final = {
    "auc": "ROC AUC: the chance that a defaulter scores above a non-defaulter (0.5 = chance)",
    "ks": "Kolmogorov-Smirnov: the largest gap between the score distributions of defaulters and others",
    "brier": "Brier score: mean squared error of the predicted probability of default (lower is better)",
    "ece": f"expected calibration error: mean |observed - predicted| default rate over "
    f"{CALIBRATION_BINS} equal-count score bins, weighted by size (lower is better)",
}
_TEST_KEYS: Final = ("auc", "ks", "brier", "ece", "default_rate", "rows")
_HOLDOUT_KEYS: Final = ("auc", "ks", "brier", "ece", "default_rate")


# ---------------------------------------------------------------------------------------------
# the document


def _num(value: Any) -> float | None:
    """A finite float, or None (NaN, infinity, a missing or non-numeric value)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _rows(value: Any) -> int | None:
    number = _num(value)
    return round(number) if number is not None else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def fairness_tables(
    fairness: Mapping[str, Any] | None,
) -> tuple[dict[str, dict[str, dict[str, float | None]]], dict[str, Any]]:
    """The per-group figures ``{attribute: {group: {figure: value}}}`` and the run's fairness settings.

    Takes :func:`federation.fairness.fairness_report`'s dict (``attributes`` beside
    ``approve_below_pd``, ``holdout_rows``, ``min_group_rows`` and ``gaps``) or the bare
    ``{attribute: {group: {...}}}`` table; entries that are not group figures are left out.
    """
    if not fairness:
        return {}, {}
    nested = fairness.get("attributes")
    table: Mapping[str, Any] = nested if isinstance(nested, dict) else fairness
    meta = {
        key: fairness[key]
        for key in ("approve_below_pd", "holdout_rows", "min_group_rows")
        if key in fairness and _num(fairness[key]) is not None
    }
    groups: dict[str, dict[str, dict[str, float | None]]] = {}
    for attribute, by_group in table.items():
        if not isinstance(by_group, dict):
            continue
        figures = {
            str(group): {name: _num(values.get(name)) for name in FIGURES}
            for group, values in by_group.items()
            if isinstance(values, dict) and "share" in values
        }
        if figures:
            groups[str(attribute)] = figures
    return groups, meta


def group_gap(figures: Mapping[str, Mapping[str, float | None]], name: str) -> dict[str, Any] | None:
    """The largest difference of one figure between the groups that have it (``missing`` aside).

    ``{"gap", "lowest", "highest", "low", "high"}``; for the approval rate also ``ratio``, the
    lowest rate over the highest (the four-fifths rule's measure). None with fewer than 2 groups.
    """
    values = {g: v for g, f in figures.items() if g != MISSING and (v := f.get(name)) is not None}
    if len(values) < 2:
        return None
    lowest = min(values, key=values.__getitem__)
    highest = max(values, key=values.__getitem__)
    gap: dict[str, Any] = {
        "gap": values[highest] - values[lowest],
        "lowest": lowest,
        "highest": highest,
        "low": values[lowest],
        "high": values[highest],
    }
    if name == "approval_rate":
        gap["ratio"] = values[lowest] / values[highest] if values[highest] > 0 else None
    return gap


def _last_round(inst: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The institution's last round entry that has ``key``."""
    rounds = [r for r in inst.get("rounds") or [] if isinstance(r, dict) and key in r]
    return rounds[-1] if rounds else None


def _model_details(report: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    settings = _dict(report.get("settings"))
    model = _dict(report.get("model"))
    card = _dict(model.get("card"))
    epsilon = _num(settings.get("epsilon"))
    client_dp = settings.get("client_dp")
    engine = report.get("engine") or ("simulation" if "dataset" in report else None)
    demo = bool(settings.get("demo_keys") or card.get("demo") or report.get("demo"))
    return {
        "name": f"FedCredit four-dimension credit-risk model, {schema.name} {schema.version}",
        "run_id": report.get("run_id") or card.get("run_id"),
        "version": {
            "label": model.get("version"),  # the registry's version of the federation, when registered
            "federation": model.get("federation"),
            "model_file": model.get("file"),
            "model_sha256": model.get("sha256"),
            "created_at": card.get("created_at"),
        },
        "model_type": (
            "a neural network with one tower per dimension (operations, credit, behaviour, scenario) "
            "whose logit is a baseline plus one contribution per dimension; it outputs a probability "
            "of default"
        ),
        "architecture": {"hidden": settings.get("hidden"), "embedding_dim": settings.get("embedding_dim")},
        "schema": {
            "name": schema.name,
            "version": schema.version,
            "sha256": card.get("schema_sha256") or schema_sha256(schema),
        },
        "federation_policy_sha256": card.get("federation_policy_sha256"),
        "training_request_sha256": card.get("training_request_sha256"),
        "training": {
            "strategy": settings.get("strategy"),
            "proximal_mu": settings.get("proximal_mu"),
            "rounds": settings.get("rounds"),
            "rounds_completed": len(
                {r.get("round") for r in report.get("rounds") or [] if isinstance(r, dict)}
            ),
            "local_epochs": settings.get("local_epochs"),
            "batch_size": settings.get("batch_size"),
            "learning_rate": settings.get("learning_rate"),
            "min_institutions": settings.get("min_institutions"),
            "seed": settings.get("seed"),
            "engine": engine,
        },
        "institutions": {
            "members": list(settings.get("members") or []),
            "contributing": list(card.get("institutions") or []),
        },
        "differential_privacy": {
            "record_level": None
            if epsilon is None
            else {
                "epsilon": epsilon,
                "delta": _num(settings.get("delta")),
                "max_grad_norm": _num(settings.get("max_grad_norm")),
            },
            "client_level": client_dp if isinstance(client_dp, dict) else None,
        },
        "secure_aggregation": bool(settings.get("secure_aggregation")),
        "demo": demo,
        "demo_notice": report.get("demo") if demo else None,
    }


def _intended_use(details: Mapping[str, Any], purposes: Sequence[str]) -> dict[str, Any]:
    members = details["institutions"]["members"] or details["institutions"]["contributing"]
    policy = details["federation_policy_sha256"]
    return {
        "primary_use": (
            "estimating the probability that a small-business credit applicant defaults, to support "
            "a credit officer's decision (approve, refer, decline) and the limit offered"
        ),
        "primary_users": members,
        "purposes": list(purposes),
        "purposes_basis": (
            f"the purpose the signed training request named, under the signed federation policy "
            f"(sha256 {policy}), which every node's own policy checked"
            if policy
            else "the purpose the signed training request named, which every node's own policy checked; "
            "no federation policy governed this run (a sandbox run)"
        ),
        "out_of_scope": list(OUT_OF_SCOPE),
    }


def _protected_columns(schema: Schema) -> list[dict[str, Any]]:
    inputs = {c.name for c in schema.features()}
    return [
        {
            "name": attribute.name,
            "type": schema.column(attribute.name).type.value,
            "description": schema.column(attribute.name).description,
            "groups": [g for g in attribute.groups if g != MISSING],
            "model_input": attribute.name in inputs,
        }
        for attribute in protected_attributes(schema)
    ]


def _not_measured_reason(report: Mapping[str, Any], schema: Schema, given: str | None) -> str:
    if given:
        return given
    if not any(c.protected for c in schema.columns):
        return f"schema {schema.name} {schema.version} marks no column protected"
    holdouts = [_rows(_dict(i).get("holdout_rows")) for i in _dict(report.get("institutions")).values()]
    if not any(holdouts):
        return "no node had holdout rows to measure them on"
    return (
        "this run reported no per-group figures (the nodes did not compute them, or the run "
        "ended before its fairness evaluation)"
    )


def _factors(
    report: Mapping[str, Any],
    fairness: Mapping[str, Any] | None,
    schema: Schema,
    secure: bool,
    not_measured: str | None,
) -> dict[str, Any]:
    groups, meta = fairness_tables(fairness)
    measured = bool(groups)
    how = (
        "computed at each node on its own holdout rows and combined under secure aggregation "
        "(SecAgg+): the coordinator saw only the federation-wide sums, never a node's rows or its "
        "own per-group counts"
        if secure
        else "computed at each node on its own holdout rows and combined at the coordinator; secure "
        "aggregation was off in this run, so the coordinator could see each node's per-group counts"
    )
    return {
        "protected_attributes": _protected_columns(schema),
        "relevant_factors": [
            "the protected attributes below, and the groups they form",
            "the institution: each member lends in its own market, see the per-institution metrics",
            "time: the economy and the applicant population change after training",
        ],
        "measured": measured,
        "source": how if measured else None,
        "not_measured_reason": None if measured else _not_measured_reason(report, schema, not_measured),
        "approve_below_pd": _num(meta.get("approve_below_pd")),
        "holdout_rows": _rows(meta.get("holdout_rows")),
        "min_group_rows": _rows(meta.get("min_group_rows")),
        "groups": groups,
        "gaps": {a: {name: group_gap(f, name) for name in GAP_FIGURES} for a, f in groups.items()},
        "notes": [
            "approval rate: the share of the group whose predicted probability of default is below "
            "the run's approval cut-off",
            "a figure is missing (n/a) where the group has too few holdout rows federation-wide to "
            "describe it without describing individuals, or too few defaulters or others for an AUC",
            "gaps compare the groups other than 'missing' (rows without a value)",
        ]
        if measured
        else [],
    }


def _metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    final = report.get("final_test_metrics")
    final_test = {k: _num(final.get(k)) for k in _TEST_KEYS} if isinstance(final, dict) else None
    institutions = _dict(report.get("institutions"))
    per_institution: dict[str, Any] = {}
    for name, inst in sorted(institutions.items()):
        last = _last_round(_dict(inst), "auc")
        per_institution[name] = {
            "round": last.get("round") if last else None,
            **{k: _num(last.get(k)) if last else None for k in _HOLDOUT_KEYS},
            "holdout_rows": _rows(_dict(inst).get("holdout_rows")),
        }
    rounds = sorted(
        {r["round"] for r in report.get("rounds") or [] if isinstance(r, dict) and "round" in r}
        | {
            r["round"]
            for inst in institutions.values()
            for r in _dict(inst).get("rounds") or []
            if isinstance(r, dict) and "round" in r
        }
    )
    central = {r["round"]: r for r in report.get("rounds") or [] if isinstance(r, dict) and "round" in r}
    holdout = {
        name: {r["round"]: _num(r.get("auc")) for r in _dict(inst).get("rounds") or [] if "auc" in r}
        for name, inst in institutions.items()
    }
    per_round = [
        {
            "round": r,
            "test_auc": _num(_dict(central.get(r)).get("auc")),
            "holdout_auc": {name: holdout[name][r] for name in sorted(holdout) if r in holdout[name]},
        }
        for r in rounds
    ]
    return {
        "definitions": dict(METRIC_DEFINITIONS),
        "final_test": final_test,
        "final_test_note": None
        if final_test is not None
        else "the run had no coordinator test set, so the final model has no test-set metrics; "
        "see each institution's holdout metrics",
        "per_institution": per_institution,
        "per_round": per_round,
    }


def _evaluation_data(report: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    final = metrics["final_test"]
    holdouts = {
        name: _rows(_dict(inst).get("holdout_rows"))
        for name, inst in sorted(_dict(report.get("institutions")).items())
    }
    known = [n for n in holdouts.values() if n is not None]
    return {
        "test_set": None
        if final is None
        else {
            "description": "the coordinator's labelled test set, scored by the final model",
            "rows": _rows(final.get("rows")),
            "default_rate": final.get("default_rate"),
        },
        "test_set_note": None if final is not None else "the run had no coordinator test set",
        "holdouts": {
            "description": (
                "each node's holdout rows, never used for training; each node scored every round's "
                "global model on them and reported its metrics"
            ),
            "rows": holdouts,
            "total_rows": sum(known) if known else None,
        },
    }


def _training_data(report: Mapping[str, Any], schema: Schema, contributing: Sequence[str]) -> dict[str, Any]:
    institutions = {
        name: {
            "train_rows": _rows(_dict(inst).get("train_rows")),
            "holdout_rows": _rows(_dict(inst).get("holdout_rows")),
            "contributed": name in contributing,
        }
        for name, inst in sorted(_dict(report.get("institutions")).items())
    }
    train = [i["train_rows"] for i in institutions.values() if i["train_rows"]]
    return {
        "dataset": report.get("dataset"),
        "schema": f"{schema.name} {schema.version}",
        "schema_description": schema.description,
        "label": schema.label_column,
        "institutions": institutions,
        "total_train_rows": sum(train) if train else None,
        "data_locality": (
            "raw data never left the nodes: each institution trained on its own rows, under its own "
            "signed compliance policy, and sent only model updates"
        ),
    }


def _disparities(factors: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    flags: list[str] = []
    for attribute, gaps in factors["gaps"].items():
        approval, auc = gaps.get("approval_rate"), gaps.get("auc")
        rows.append(
            {
                "attribute": attribute,
                "approval_rate_gap": approval["gap"] if approval else None,
                "approval_rate_ratio": approval.get("ratio") if approval else None,
                "auc_gap": auc["gap"] if auc else None,
            }
        )
        ratio = approval.get("ratio") if approval else None
        low_ratio = ratio is not None and ratio < FOUR_FIFTHS
        if approval and (approval["gap"] >= APPROVAL_GAP_FLAG or low_ratio):
            flags.append(
                f"{attribute}: approval rate {approval['low']:.1%} for {approval['lowest']} against "
                f"{approval['high']:.1%} for {approval['highest']} (gap {approval['gap']:.1%}"
                + (f", ratio {ratio:.2f}, below the four-fifths rule's {FOUR_FIFTHS}" if low_ratio else "")
                + ")"
            )
        if auc and auc["gap"] >= AUC_GAP_FLAG:
            flags.append(
                f"{attribute}: AUC {auc['low']:.3f} for {auc['lowest']} against {auc['high']:.3f} "
                f"for {auc['highest']}: the model ranks applicants less well in some groups"
            )
    return rows, flags


def _ethical(
    report: Mapping[str, Any], schema: Schema, details: Mapping[str, Any], factors: Mapping[str, Any]
) -> dict[str, Any]:
    protected = [c["name"] for c in factors["protected_attributes"]]
    as_inputs = [c["name"] for c in factors["protected_attributes"] if c["model_input"]]
    rows, flags = _disparities(factors)
    dp = details["differential_privacy"]
    record, client = dp["record_level"], dp["client_level"]
    spent = {
        name: _num(last.get("epsilon_spent"))
        for name, inst in sorted(_dict(report.get("institutions")).items())
        if (last := _last_round(_dict(inst), "epsilon_spent")) is not None
    }
    if record is not None:
        privacy = (
            f"record-level differential privacy (DP-SGD) at every node: epsilon {record['epsilon']:g}, "
            f"delta {record['delta']:g} per institution for the whole run"
        )
    else:
        privacy = (
            "no record-level differential privacy: the model may memorize individual training rows, "
            "and membership inference against it is possible"
        )
    if client is not None:
        privacy += f"; client-level DP added by the coordinator (epsilon {_num(client.get('epsilon'))})"
    if protected:
        inputs_text = (
            f"the protected attributes ({', '.join(protected)}) are not model inputs"
            if not as_inputs
            else f"protected attributes used as model inputs: {', '.join(as_inputs)}"
        )
        proxy_text = (
            "features that correlate with a protected attribute (region, industry, business age, "
            "household consumption, ...) can act as its proxy, so excluding the attribute does not "
            "by itself make the model's outcomes equal across groups; the disparities below show "
            "how far they differ"
        )
    else:
        inputs_text = f"schema {schema.name} marks no column protected"
        proxy_text = "without protected attributes in the data, disparities between groups cannot be measured"
    return {
        "protected_attributes_as_inputs": inputs_text,
        "proxies": proxy_text,
        "disparities": rows,
        "disparities_note": None
        if factors["measured"]
        else f"not measured: {factors['not_measured_reason']}",
        "flagged": flags,
        "privacy": {
            "differential_privacy": privacy,
            "epsilon_spent": spent,
            "secure_aggregation": "on: the coordinator saw only the sum of the institutions' updates"
            if details["secure_aggregation"]
            else "off: the coordinator saw each institution's update",
        },
        "human_review": "declines and referrals must be reviewed by a person; the applicant can ask why",
    }


def _caveats(
    report: Mapping[str, Any],
    details: Mapping[str, Any],
    metrics: Mapping[str, Any],
    ethical: Mapping[str, Any],
) -> list[str]:
    out: list[str] = []
    if details["demo"]:
        out.append(
            "DEMO: this run was signed with FedCredit's published demo keys, which anyone can sign "
            "with, and trained on demo data; never use this model for real applicants"
        )
    dataset = report.get("dataset")
    if dataset == "sme":
        out.append(
            "trained on the 'sme' schema in Flower's simulation engine: unless the run named its own "
            "folders, the borrowers are synthetic; validate on real applicants before any use"
        )
    elif dataset == "uci":
        out.append(
            "trained on the public UCI Taiwan credit-card data (consumers, 2005), not small businesses: "
            "a demonstration of the method, not a model for small-business lending"
        )
    final = metrics["final_test"]
    if final is None:
        out.append("no coordinator test set: the final model was evaluated only on the nodes' holdout rows")
    else:
        auc, ece = final.get("auc"), final.get("ece")
        if auc is not None and auc < 0.6:
            how = "ranks applicants worse than chance" if auc < 0.5 else "barely ranks applicants"
            out.append(f"test AUC {auc:.4f}: the model {how} (0.5 = chance); do not deploy it")
        if ece is not None and ece >= ECE_FLAG:
            out.append(
                f"test ECE {ece:.4f}: predicted probabilities of default are off by that much on average; "
                "recalibrate before using them as probabilities or setting cut-offs on them"
            )
    out.append(
        "calibration drifts as the economy and the applicant population change: track observed against "
        "predicted default rates per score band, and recalibrate or retrain when they part"
    )
    out.append(
        "re-validate per institution before use: each member should check discrimination and calibration "
        "on its own recent applicants, as the per-institution holdout metrics differ"
    )
    failures = [f for f in report.get("failures") or [] if isinstance(f, dict)]
    if failures:
        out.append(
            f"{len(failures)} node failure(s) or policy refusal(s) during the run (see report.json): some "
            "institutions' data may have counted in fewer rounds than others'"
        )
    if ethical["flagged"]:
        out.append("group disparities flagged above: review them before use, and monitor them in production")
    return out


def card_document(
    report: Mapping[str, Any],
    fairness: Mapping[str, Any] | None,
    schema: Schema,
    *,
    purposes: Sequence[str] = ("credit_underwriting",),
    fairness_not_measured: str | None = None,
) -> dict[str, Any]:
    """The model card of the run ``report`` describes, as a JSON-ready dict, one key per section.

    ``fairness`` is the run's per-group figures (see :func:`fairness_tables`), None when not
    measured (``fairness_not_measured`` says why, when the caller knows); ``purposes`` what
    the training request named the model for.
    """
    details = _model_details(report, schema)
    factors = _factors(report, fairness, schema, details["secure_aggregation"], fairness_not_measured)
    metrics = _metrics(report)
    ethical = _ethical(report, schema, details, factors)
    return {
        "card_format": CARD_FORMAT,
        "title": f"Model card: FedCredit run {details['run_id']}",
        "reference": 'Mitchell et al., "Model Cards for Model Reporting", FAT* 2019',
        "model_details": details,
        "intended_use": _intended_use(details, purposes),
        "factors": factors,
        "metrics": metrics,
        "evaluation_data": _evaluation_data(report, metrics),
        "training_data": _training_data(report, schema, details["institutions"]["contributing"]),
        "ethical_considerations": ethical,
        "caveats_and_recommendations": _caveats(report, details, metrics, ethical),
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def pct(value: float | None) -> str:
    """A rate as the Markdown shows it."""
    return "n/a" if value is None else f"{value:.1%}"


def dec(value: float | None) -> str:
    """An AUC, KS, Brier or ECE as the Markdown shows it."""
    return "n/a" if value is None else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _image(images: Mapping[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[key]})", ""] if key in images else []


def _md_details(d: Mapping[str, Any]) -> list[str]:
    dp = d["differential_privacy"]
    record, client = dp["record_level"], dp["client_level"]
    t = d["training"]
    strategy = t["strategy"] if not t.get("proximal_mu") else f"{t['strategy']} (mu {t['proximal_mu']:g})"
    rows = [
        ("Model", d["name"]),
        ("Type", d["model_type"]),
        ("Run id", d["run_id"]),
        (
            "Version",
            " of ".join(str(v) for v in (d["version"]["label"], d["version"]["federation"]) if v)
            or "not registered",
        ),
        ("Model file", f"{d['version']['model_file']} (sha256 `{d['version']['model_sha256']}`)"),
        ("Created", d["version"]["created_at"]),
        ("Schema", f"{d['schema']['name']} {d['schema']['version']} (sha256 `{d['schema']['sha256']}`)"),
        (
            "Federation policy sha256",
            f"`{d['federation_policy_sha256']}`" if d["federation_policy_sha256"] else "none (sandbox run)",
        ),
        (
            "Training request sha256",
            f"`{d['training_request_sha256']}`" if d["training_request_sha256"] else None,
        ),
        ("Strategy", strategy),
        ("Rounds", f"{t['rounds_completed']} of {t['rounds']}"),
        (
            "Local epochs, batch size, learning rate",
            f"{t['local_epochs']}, {t['batch_size']}, {t['learning_rate']}",
        ),
        ("Engine", t["engine"]),
        ("Members", ", ".join(d["institutions"]["members"]) or None),
        ("Contributing institutions", ", ".join(d["institutions"]["contributing"]) or "none"),
        (
            "Differential privacy",
            f"record-level: epsilon {record['epsilon']:g}, delta {record['delta']:g}" if record else "none",
        ),
        ("Client-level DP", f"epsilon {_cell(client.get('epsilon'))}" if client else "none"),
        ("Secure aggregation", "on (SecAgg+)" if d["secure_aggregation"] else "off"),
        ("DEMO", "yes: published demo keys" if d["demo"] else "no"),
    ]
    return _table(("", ""), rows)


def _md_intended(u: Mapping[str, Any]) -> list[str]:
    return [
        f"**Primary use:** {u['primary_use']}.",
        "",
        f"**Primary users:** credit staff of the federation's members ({', '.join(u['primary_users']) or 'none listed'}).",
        "",
        f"**Purposes:** {', '.join(u['purposes'])}: {u['purposes_basis']}.",
        "",
        "**Out of scope:**",
        "",
        *[f"- {use}" for use in u["out_of_scope"]],
        "",
    ]


def _md_factors(f: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    lines = ["Relevant factors:", "", *[f"- {x}" for x in f["relevant_factors"]], ""]
    if f["protected_attributes"]:
        lines += ["Protected attributes (from the schema):", ""]
        lines += _table(
            ("attribute", "type", "groups", "model input"),
            [
                (c["name"], c["type"], ", ".join(c["groups"]), c["model_input"])
                for c in f["protected_attributes"]
            ],
        )
    else:
        lines += ["The schema marks no column protected.", ""]
    if not f["measured"]:
        return [*lines, f"**Per-group figures: not measured**: {f['not_measured_reason']}.", ""]
    lines += [f"Per-group figures, {f['source']}.", ""]
    said = []
    if f["approve_below_pd"] is not None:
        said.append(f"approval: predicted probability of default below {f['approve_below_pd']:.1%}")
    if f["holdout_rows"] is not None:
        said.append(f"{f['holdout_rows']:,} holdout rows")
    if f["min_group_rows"] is not None:
        said.append(f"rates shown for groups of at least {f['min_group_rows']} rows")
    if said:
        text = "; ".join(said)
        lines += [text[0].upper() + text[1:] + ".", ""]
    for attribute, groups in f["groups"].items():
        lines += [f"**{attribute}**", ""]
        lines += _table(
            ("group", "share", "default rate", "approval rate", "AUC"),
            [
                (g, pct(v["share"]), pct(v["default_rate"]), pct(v["approval_rate"]), dec(v["auc"]))
                for g, v in groups.items()
            ],
        )
    lines += ["Largest gap between groups per attribute:", ""]
    rows = []
    for attribute, gaps in f["gaps"].items():
        a, u = gaps.get("approval_rate"), gaps.get("auc")
        rows.append(
            (
                attribute,
                f"{pct(a['gap'])} ({a['lowest']} {pct(a['low'])}, {a['highest']} {pct(a['high'])})"
                if a
                else "n/a",
                f"{a['ratio']:.2f}" if a and a.get("ratio") is not None else "n/a",
                f"{dec(u['gap'])} ({u['lowest']} {dec(u['low'])}, {u['highest']} {dec(u['high'])})"
                if u
                else "n/a",
            )
        )
    lines += _table(("attribute", "approval rate gap", "approval ratio (lowest/highest)", "AUC gap"), rows)
    lines += [f"- {n}" for n in f["notes"]] + [""]
    return lines + _image(images, "fairness", "approval rate and AUC per group")


def _md_metrics(m: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    lines = [*[f"- **{k}**: {v}" for k, v in m["definitions"].items()], ""]
    final = m["final_test"]
    if final is None:
        lines += [f"**Final test metrics: none**: {m['final_test_note']}.", ""]
    else:
        lines += ["Final model, coordinator's test set:", ""]
        lines += _table(
            ("AUC", "KS", "Brier", "ECE", "default rate", "rows"),
            [
                (
                    dec(final["auc"]),
                    dec(final["ks"]),
                    dec(final["brier"]),
                    dec(final["ece"]),
                    pct(final["default_rate"]),
                    f"{final['rows']:,.0f}" if final["rows"] is not None else None,
                )
            ],
        )
    if m["per_institution"]:
        lines += ["Each institution's holdout rows, at the last round it evaluated:", ""]
        lines += _table(
            ("institution", "round", "AUC", "KS", "Brier", "ECE", "default rate", "holdout rows"),
            [
                (
                    name,
                    v["round"],
                    dec(v["auc"]),
                    dec(v["ks"]),
                    dec(v["brier"]),
                    dec(v["ece"]),
                    pct(v["default_rate"]),
                    v["holdout_rows"],
                )
                for name, v in m["per_institution"].items()
            ],
        )
    if m["per_round"]:
        names = sorted({n for r in m["per_round"] for n in r["holdout_auc"]})
        lines += ["AUC per round (test set, then each institution's holdout):", ""]
        lines += _table(
            ("round", "test AUC", *names),
            [
                (r["round"], dec(r["test_auc"]), *[dec(r["holdout_auc"].get(n)) for n in names])
                for r in m["per_round"]
            ],
        )
    lines += _image(images, "roc", "ROC curve on the test set")
    lines += _image(images, "calibration", "reliability diagram on the test set")
    return lines + _image(images, "auc_rounds", "AUC per round")


def _md_evaluation(e: Mapping[str, Any]) -> list[str]:
    t = e["test_set"]
    lines = (
        [
            f"- **Test set:** {t['description']}: {_cell(t['rows'])} rows, default rate {pct(t['default_rate'])}."
        ]
        if t
        else [f"- **Test set:** none: {e['test_set_note']}."]
    )
    h = e["holdouts"]
    lines += [f"- **Holdouts:** {h['description']}; {_cell(h['total_rows'])} rows in all.", ""]
    if h["rows"]:
        lines += _table(("institution", "holdout rows"), list(h["rows"].items()))
    return lines


def _md_training(t: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- **Schema:** {t['schema']}" + (f": {t['schema_description']}" if t["schema_description"] else ""),
        f"- **Label:** `{t['label']}` (1 = default)",
        *([f"- **Dataset:** {t['dataset']}"] if t["dataset"] else []),
        f"- **Data locality:** {t['data_locality']}.",
        f"- **Training rows in all:** {_cell(t['total_train_rows'])}",
        "",
    ]
    if t["institutions"]:
        lines += _table(
            ("institution", "train rows", "holdout rows", "contributed to the model"),
            [(n, v["train_rows"], v["holdout_rows"], v["contributed"]) for n, v in t["institutions"].items()],
        )
    return lines


def _md_ethical(e: Mapping[str, Any]) -> list[str]:
    p = e["privacy"]
    lines = [
        f"- **Protected attributes:** {e['protected_attributes_as_inputs']}.",
        f"- **Proxies:** {e['proxies']}.",
        f"- **Privacy:** {p['differential_privacy']}; secure aggregation {p['secure_aggregation']}.",
        f"- **Human review:** {e['human_review']}.",
        "",
    ]
    if p["epsilon_spent"]:
        lines += _table(("institution", "epsilon spent"), [(n, v) for n, v in p["epsilon_spent"].items()])
    if e["disparities"]:
        lines += ["Disparities between groups:", ""]
        lines += _table(
            ("attribute", "approval rate gap", "approval ratio", "AUC gap"),
            [
                (
                    r["attribute"],
                    pct(r["approval_rate_gap"]),
                    "n/a" if r["approval_rate_ratio"] is None else f"{r['approval_rate_ratio']:.2f}",
                    dec(r["auc_gap"]),
                )
                for r in e["disparities"]
            ],
        )
    else:
        lines += [f"Disparities between groups: {e['disparities_note'] or 'none to show'}.", ""]
    if e["flagged"]:
        lines += ["**Flagged:**", "", *[f"- {x}" for x in e["flagged"]], ""]
    return lines


def render_markdown(document: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The card as Markdown: one ``##`` heading per section, tables, plots linked by file name."""
    d = document["model_details"]
    lines = [f"# {document['title']}", ""]
    if d["demo"]:
        lines += [
            f"> **{d['demo_notice'] or 'DEMO run: published demo keys; never use it for real data'}**",
            "",
        ]
    lines += [f"Sections after {document['reference']}.", ""]
    render = {
        "model_details": lambda s: _md_details(s),
        "intended_use": lambda s: _md_intended(s),
        "factors": lambda s: _md_factors(s, images),
        "metrics": lambda s: _md_metrics(s, images),
        "evaluation_data": lambda s: _md_evaluation(s),
        "training_data": lambda s: _md_training(s),
        "ethical_considerations": lambda s: _md_ethical(s),
        "caveats_and_recommendations": lambda s: [*[f"- {c}" for c in s], ""],
    }
    for key, heading in SECTIONS:
        lines += [f"## {heading}", "", *render[key](document[key])]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# plots


def _save(fig: Figure, run_dir: Path, name: str) -> str:
    temporary = run_dir / f".{name}.tmp"
    try:
        fig.tight_layout()
        fig.savefig(temporary, format="png", dpi=110)
        os.replace(temporary, run_dir / name)
    finally:
        plt.close(fig)
        temporary.unlink(missing_ok=True)
    return name


def _test_set(outcome: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The final model's test-set scores and labels (float64), None without both classes."""
    scores, labels = getattr(outcome, "test_scores", None), getattr(outcome, "test_labels", None)
    if scores is None or labels is None:
        return None
    p = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(p) != len(y) or len(p) == 0 or not np.isfinite(p).all() or len(np.unique(y)) < 2:
        return None
    return p, y


def calibration_bins(
    y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted and observed default rate, and rows, per equal-count score bin (ECE's bins)."""
    order = np.argsort(p, kind="stable")
    sizes = np.array([len(c) for c in np.array_split(order, bins)])
    sizes = sizes[sizes > 0]
    bin_of = np.repeat(np.arange(len(sizes)), sizes)
    predicted = np.bincount(bin_of, weights=p[order]) / sizes
    observed = np.bincount(bin_of, weights=y[order]) / sizes
    return predicted, observed, sizes


def _plot_roc(run_dir: Path, p: np.ndarray, y: np.ndarray) -> str:
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot(fpr, tpr, lw=2, label=f"federated model (AUC {roc_auc_score(y, p):.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, test set ({len(y):,} rows)"
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, run_dir, ROC_PLOT)


def _plot_calibration(run_dir: Path, p: np.ndarray, y: np.ndarray) -> str:
    predicted, observed, sizes = calibration_bins(y, p)
    ece = float(np.sum(sizes / sizes.sum() * np.abs(observed - predicted)))
    error = np.sqrt(observed * (1 - observed) / sizes)  # binomial standard error of each bin's rate
    top = float(max(predicted.max(), (observed + error).max())) * 1.08 or 1.0
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot([0, top], [0, top], "--", color="grey", lw=1, label="perfect calibration")
    ax.errorbar(
        predicted, observed, yerr=error, fmt="o-", lw=1.5, capsize=3, label="model (10 equal-count bins)"
    )
    ax.set(
        xlim=(0, top),
        ylim=(0, top),
        xlabel="mean predicted probability of default",
        ylabel="observed default rate",
        title=f"Reliability, test set (ECE {ece:.4f})",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, run_dir, CALIBRATION_PLOT)


def _plot_auc_rounds(run_dir: Path, report: Mapping[str, Any]) -> str | None:
    central = [
        (r["round"], v)
        for r in report.get("rounds") or []
        if isinstance(r, dict) and "round" in r and (v := _num(r.get("auc"))) is not None
    ]
    holdouts = {
        name: pts
        for name, inst in sorted(_dict(report.get("institutions")).items())
        if (
            pts := [
                (r["round"], v)
                for r in _dict(inst).get("rounds") or []
                if isinstance(r, dict) and "round" in r and (v := _num(r.get("auc"))) is not None
            ]
        )
    }
    if not central and not holdouts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if central:
        ax.plot(*zip(*central, strict=True), "k-o", lw=2, label="test set")
    for name, pts in holdouts.items():
        ax.plot(*zip(*pts, strict=True), "-", marker=".", lw=1, alpha=0.8, label=f"{name} (holdout)")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="round", ylabel="AUC", title="AUC per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, run_dir, AUC_ROUNDS_PLOT)


def _plot_fairness(run_dir: Path, fairness: Mapping[str, Any] | None) -> str | None:
    groups, meta = fairness_tables(fairness)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + 0.6, 4.4), squeeze=False)
    width = 0.38
    for ax, (attribute, figures) in zip(axes[0], groups.items(), strict=True):
        names = list(figures)
        x = np.arange(len(names))
        for offset, figure, label in (
            (-width / 2, "approval_rate", "approval rate"),
            (width / 2, "auc", "AUC"),
        ):
            values = np.array([np.nan if (v := figures[g][figure]) is None else v for g in names])
            bars = ax.bar(x + offset, np.nan_to_num(values), width, label=label)
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(
                    "n/a" if np.isnan(value) else f"{value:.2f}",
                    (bar.get_x() + bar.get_width() / 2, 0 if np.isnan(value) else value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        shares = [figures[g]["share"] for g in names]
        ax.set_xticks(x, [f"{g}\n({pct(s)})" for g, s in zip(names, shares, strict=True)], fontsize=8)
        ax.set(ylim=(0, 1.22), yticks=np.linspace(0, 1, 6), title=attribute)  # headroom for the legend
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("rate / AUC (group share below)")
    axes[0][0].legend(fontsize=8, loc="upper left", ncol=2)
    cutoff = _num(meta.get("approve_below_pd"))
    fig.suptitle(
        "Approval rate and AUC per group, nodes' holdout rows"
        + (f" (approve: PD < {cutoff:.1%})" if cutoff is not None else ""),
        fontsize=10,
    )
    return _save(fig, run_dir, FAIRNESS_PLOT)


def plot_card(run_dir: Path, outcome: Any, report: Mapping[str, Any]) -> dict[str, str]:
    """The card's plots, written into ``run_dir``: name -> file name; a plot without its data is left out.

    ``roc`` and ``calibration`` need the final model's test-set scores (both classes),
    ``auc_rounds`` an AUC in some round, ``fairness`` the outcome's per-group figures.
    """
    images: dict[str, str] = {}
    test = _test_set(outcome)
    if test is not None:
        images["roc"] = _plot_roc(run_dir, *test)
        images["calibration"] = _plot_calibration(run_dir, *test)
    if (rounds := _plot_auc_rounds(run_dir, report)) is not None:
        images["auc_rounds"] = rounds
    if (fair := _plot_fairness(run_dir, getattr(outcome, "fairness", None))) is not None:
        images["fairness"] = fair
    return images


# ---------------------------------------------------------------------------------------------
# writing


def _write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside ``path``, then rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def card_files(document: Mapping[str, Any]) -> list[str]:
    """The files :func:`write_card` wrote for ``document``: JSON, Markdown, then the plots."""
    files = _dict(document.get("files"))
    return [files["json"], files["markdown"], *_dict(files.get("plots")).values()]


def write_card(
    run_dir: Path,
    report: Mapping[str, Any],
    outcome: Any,
    schema: Schema,
    *,
    purposes: Sequence[str] = ("credit_underwriting",),
) -> dict[str, Any]:
    """Write ``model_card.json``, ``model_card.md`` and the plots into ``run_dir``; returns the document."""
    run_dir.mkdir(parents=True, exist_ok=True)
    images = plot_card(run_dir, outcome, report)
    document = card_document(report, getattr(outcome, "fairness", None), schema, purposes=purposes)
    document["files"] = {"json": CARD_JSON, "markdown": CARD_MARKDOWN, "plots": images}
    _write_text(run_dir / CARD_JSON, json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n")
    _write_text(run_dir / CARD_MARKDOWN, render_markdown(document, images))
    return document
