from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.research.baselines import new_model
from federation.errors import FedCreditError
from federation.hyperparameters import TrainConfig
from federation.loading import EncodedData, encode_frame
from federation.model import (
    MODEL_FORMAT_VERSION,
    FourDimensionModel,
    content_sha256,
    file_sha256,
    load_model,
    load_trainable_weights,
    save_model,
    tensors,
    trainable_weights,
)
from federation.model_card import ModelCard
from federation.normalization import combine_moments, local_moments, stats_from_moments
from federation.schema import Dimension, Schema
from federation.scoring import points_from_logit, score
from federation.training import mean_raw_contributions, predict_logits, train_local

from .model_helpers import card_for_tests


@pytest.fixture(scope="module")
def data(sme_frame: pd.DataFrame, sme_schema: Schema) -> EncodedData:
    return encode_frame(sme_frame, sme_schema, "mem")


def _trained(data: EncodedData, seed: int = 3) -> FourDimensionModel:
    model = new_model(data, None, None, seed)
    train_local(model, data, TrainConfig(epochs=2), seed=seed)
    return model


def test_one_tower_per_dimension_and_protected_inputs_absent(data: EncodedData) -> None:
    model = FourDimensionModel(data.layout)
    assert model.dimensions == tuple(Dimension)
    assert set(model.towers) == {d.value for d in Dimension}
    widths = sum(t.mlp[0].in_features for t in model.towers.values())  # type: ignore[index]
    imputed = sum(data.layout.numeric_imputed)
    cats = len(data.layout.categorical) * model.config.embedding_dim
    assert widths == len(data.layout.numeric) + imputed + cats


def test_contributions_sum_exactly_to_the_logit(data: EncodedData) -> None:
    model = _trained(data)
    model.set_reference(mean_raw_contributions(model, data))
    numeric, categorical = tensors(data)
    with torch.no_grad():
        parts = model.contributions(numeric, categorical)
        logit = model(numeric, categorical)
    assert parts.shape == (len(data), 4)
    torch.testing.assert_close(parts.sum(1) + model.baseline(), logit, rtol=0, atol=1e-5)
    # relative to the federation's average borrower: contributions average to zero
    np.testing.assert_allclose(parts.mean(0).numpy(), 0.0, atol=1e-4)
    batch = score(model, data)
    np.testing.assert_allclose(batch.contributions.sum(1) + batch.baseline, batch.logit, atol=1e-9)
    np.testing.assert_allclose(batch.logit, logit.numpy(), atol=1e-5)


def test_training_is_deterministic_under_a_seed(data: EncodedData) -> None:
    a, b, c = _trained(data, 5), _trained(data, 5), _trained(data, 6)
    for wa, wb in zip(trainable_weights(a), trainable_weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(predict_logits(a, data), predict_logits(c, data))


def test_training_lowers_the_loss_and_learns(data: EncodedData) -> None:
    from federation.metrics import auc
    from federation.training import predict_proba

    model = new_model(data, None, None, 0)
    before = auc(data.label, predict_proba(model, data))
    train_local(model, data, TrainConfig(epochs=5), seed=0)  # 3 epochs leave seeds at 0.65..0.72
    after = auc(data.label, predict_proba(model, data))
    assert after > 0.72 and after > before + 0.2


def test_fedprox_term_keeps_weights_closer_to_the_start(data: EncodedData) -> None:
    start = new_model(data, None, None, 1)
    plain, prox = new_model(data, None, None, 1), new_model(data, None, None, 1)
    train_local(plain, data, TrainConfig(epochs=1), seed=1)
    train_local(prox, data, TrainConfig(epochs=1, proximal_mu=10.0), seed=1)

    def drift(m: FourDimensionModel) -> float:
        return sum(
            float(((p - q) ** 2).sum().detach())
            for p, q in zip(m.parameters(), start.parameters(), strict=True)
        )

    assert drift(prox) < drift(plain)


def test_federated_moments_equal_pooled_statistics(data: EncodedData) -> None:
    parts = [
        data.subset(np.arange(0, 500)),
        data.subset(np.arange(500, 2200)),
        data.subset(np.arange(2200, len(data))),
    ]
    stats = stats_from_moments(
        combine_moments([local_moments(p.numeric) for p in parts], [len(p) for p in parts])
    )
    np.testing.assert_allclose(stats.mean, np.nanmean(data.numeric, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.std, np.nanstd(data.numeric.astype(np.float64), axis=0), rtol=1e-4)


def test_weights_exchange_and_model_file_round_trip(data: EncodedData, tmp_path: Path) -> None:
    model = _trained(data)
    other = new_model(data, None, None, 99)
    load_trainable_weights(other, trainable_weights(model))
    np.testing.assert_allclose(predict_logits(other, data), predict_logits(model, data), atol=1e-6)
    card = card_for_tests(metrics={"auc": 0.75})
    sha = save_model(model, tmp_path / "m.pt", card)
    assert sha == file_sha256(tmp_path / "m.pt")
    loaded, loaded_card = load_model(tmp_path / "m.pt", expected_sha256=sha)
    assert loaded_card == card and loaded_card.schema_name == "sme"
    for (name, a), (other_name, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == other_name and torch.equal(a, b)
    np.testing.assert_allclose(predict_logits(loaded, data), predict_logits(model, data), atol=1e-6)
    with pytest.raises(ValueError, match=r"expected .* weight arrays, got 1"):
        load_trainable_weights(other, trainable_weights(model)[:1])


def test_points_scale() -> None:
    # odds 50:1 -> 600 points; doubling the odds of being good adds 20 points
    assert points_from_logit(np.array([-np.log(50)]))[0] == pytest.approx(600)
    assert points_from_logit(np.array([-np.log(100)]))[0] == pytest.approx(620)


# --- the model file: its card, its digests, and what it refuses ---------------------------------


class RunsACommand:
    """Unpickling this runs a shell command: a model file must never be able to."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def saved(data: EncodedData, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    save_model(FourDimensionModel(data.layout), path, card_for_tests())
    return path


def _refused(path: Path, match: str, expected_sha256: str | None = None) -> str:
    with pytest.raises(FedCreditError) as info:
        load_model(path, expected_sha256=expected_sha256)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert re.search(match, message), message
    return message


def test_the_file_holds_only_weights_only_types_and_the_card_as_json(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    assert payload["format_version"] == MODEL_FORMAT_VERSION
    assert json.loads(payload["card"]) == card_for_tests().to_dict()
    assert payload["content_sha256"] == content_sha256(
        payload["card"], payload["layout"], payload["config"], payload["state_dict"]
    )
    assert not saved.with_suffix(".pt.tmp").exists()


def test_a_weight_changed_in_place_is_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel())
    payload["state_dict"][name].view(-1)[0] += 0.5
    torch.save(payload, saved)
    _refused(saved, "changed after it was saved")


def test_a_card_changed_in_place_is_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    card = json.loads(payload["card"])
    card["institutions"] = ["bank_a", "bank_b", "impostor"]
    payload["card"] = json.dumps(card)
    torch.save(payload, saved)
    _refused(saved, "changed after it was saved")


def test_a_malformed_card_is_refused_even_with_a_matching_digest(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    card = json.loads(payload["card"])
    card["institutions"] = "bank_a"
    payload["card"] = json.dumps(card)
    payload["content_sha256"] = content_sha256(
        payload["card"], payload["layout"], payload["config"], payload["state_dict"]
    )
    torch.save(payload, saved)
    _refused(saved, "malformed model card: field 'institutions'")


def test_weights_that_do_not_fit_the_layout_are_refused(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["layout"]["cardinalities"] = [c + 1 for c in payload["layout"]["cardinalities"]]
    payload["content_sha256"] = content_sha256(
        payload["card"], payload["layout"], payload["config"], payload["state_dict"]
    )
    torch.save(payload, saved)
    _refused(saved, "weights do not fit the model's layout")


@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle", "inside_the_payload"])
def test_a_file_with_arbitrary_objects_is_refused_and_never_unpickled(
    saved: Path, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "marker"
    evil = RunsACommand(marker)
    if kind == "torch_save":
        torch.save({"x": evil}, saved)
        match = "refused, never unpickled"
    elif kind == "plain_pickle":
        saved.write_bytes(pickle.dumps(evil))
        match = "not a FedCredit model file"
    else:
        payload = torch.load(saved, weights_only=True)
        payload["card"] = evil
        torch.save(payload, saved)
        match = r"\(posix\.system\).*refused, never unpickled"
    _refused(saved, match)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("garbage.pt", bytes(range(256)) * 4, "not a FedCredit model file"),
        ("empty.pt", b"", "empty file, not a FedCredit model file"),
        ("model.json", b'{"format_version": 2, "card": {}}', "not a FedCredit model file"),
        ("broken_zip.pt", b"PK\x03\x04" + bytes(200), r"not a FedCredit model file \(\w+\)"),
        ("list.pt", None, "not a FedCredit model file"),
    ],
)
def test_what_is_not_a_model_file_is_refused_in_one_line(
    tmp_path: Path, name: str, content: bytes | None, match: str
) -> None:
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    _refused(path, match)


def test_a_folder_a_missing_file_and_an_unreadable_file_are_one_line(saved: Path, tmp_path: Path) -> None:
    _refused(tmp_path, "is a folder, not a model file")
    _refused(tmp_path / "absent.pt", "no such model file")
    if os.geteuid() != 0:  # root reads any file
        saved.chmod(0)
        try:
            _refused(saved, "cannot read the model file")
        finally:
            saved.chmod(0o600)


def test_a_file_whose_sha256_is_not_the_expected_one_is_refused(saved: Path) -> None:
    actual = file_sha256(saved)
    assert actual == hashlib.sha256(saved.read_bytes()).hexdigest()
    load_model(saved, expected_sha256=actual.upper())
    message = _refused(saved, f"sha256 is {actual}, expected {'0' * 64}", expected_sha256="0" * 64)
    assert "not the registered model file" in message


def test_an_older_or_newer_format_is_refused(data: EncodedData, saved: Path) -> None:
    model = FourDimensionModel(data.layout)
    torch.save(
        {
            "format_version": 1,
            "layout": model.layout.to_dict(),
            "config": {"hidden": 32, "embedding_dim": 4},
            "state_dict": model.state_dict(),
            "metadata": {"run_id": "old", "schema": "sme"},
        },
        saved,
    )
    _refused(saved, r"made by an older FedCredit \(model format 1.*\); retrain")
    payload = {"format_version": MODEL_FORMAT_VERSION + 1}
    torch.save(payload, saved)
    _refused(saved, "made by a newer FedCredit")


def test_the_card_reads_back_and_a_malformed_one_names_its_file() -> None:
    card = card_for_tests(metrics={"auc": 0.8, "rows": 100})
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_json(card.to_json()) == card
    assert card.metrics == {"auc": 0.8, "rows": 100.0} and card.institutions == ("bank_a", "bank_b")
    broken = {**card.to_dict(), "demo": "yes"}
    with pytest.raises(FedCreditError, match=r"^runs/x/model\.pt: malformed model card: field 'demo'"):
        ModelCard.from_dict(broken, "runs/x/model.pt")
    missing = {k: v for k, v in card.to_dict().items() if k != "created_at"}
    with pytest.raises(FedCreditError, match=r"^m\.pt: malformed model card: missing created_at$"):
        ModelCard.from_dict(missing, "m.pt")
    with pytest.raises(FedCreditError, match=r"^m\.pt: malformed model card: unknown extra$"):
        ModelCard.from_dict({**card.to_dict(), "extra": 1}, "m.pt")
    with pytest.raises(FedCreditError, match="field 'created_at'"):
        ModelCard.from_dict({**card.to_dict(), "created_at": "2025-01-01T00:00:00"}, "m.pt")
    with pytest.raises(FedCreditError, match="field 'metrics'"):
        ModelCard.from_dict({**card.to_dict(), "metrics": {"auc": float("nan")}}, "m.pt")
    with pytest.raises(FedCreditError, match=r"^m\.pt: malformed model card: not JSON"):
        ModelCard.from_json("{", "m.pt")
    with pytest.raises(FedCreditError, match="field 'training_request_sha256'"):
        replace(card, training_request_sha256="")


def test_the_card_resolves_the_built_in_schema_it_was_trained_on(sme_schema: Schema) -> None:
    card = card_for_tests()
    assert card.schema() == sme_schema
    with pytest.raises(
        FedCreditError, match=r"is schema sme 1\.0\.0, but the model was trained on schema sme 0\.0-other"
    ):
        replace(card, schema_version="0.0-other").schema()
    with pytest.raises(FedCreditError, match="with other columns or ranges"):
        replace(card, schema_sha256="0" * 64).schema()
    with pytest.raises(
        FedCreditError, match=r"my\.toml: is schema sme 1\.0\.0, but the model was trained on schema x"
    ):
        replace(card, schema_name="x").schema(sme_schema, "my.toml")
    with pytest.raises(FedCreditError, match="which FedCredit does not ship"):
        replace(card, schema_name="my_bank_schema").schema()
