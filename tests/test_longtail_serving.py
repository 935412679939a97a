"""Long-tail-aware serving on real servers on 127.0.0.1: the prior as a knob per request (checked against a
model re-folded with that tau / prior), the counters after a known sequence of requests, the label-shift
report, its adaptation, and the low-confidence sample."""

from __future__ import annotations

import io
import json
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pih2t_deploy.checkpoint import load_checkpoint
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.fold import fold
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from tests import images
from tests.fakes import COUNTS, FakeClassifier
from tests.servers import running_server

DIGITS = [3, 5, 8]


@pytest.fixture(scope="module")
def refold(digits_artifact):
    """(the unfolded checkpoint, the model input of three sample digits, a function folding with tau / prior
    and returning that model's float64 logits on them)."""
    ckpt = load_checkpoint(digits_artifact[0])
    batch = ckpt.preprocessing.to_numpy([Image.open(io.BytesIO(images.sample(d))) for d in DIGITS])

    def logits(tau: float = 0.0, prior=None) -> np.ndarray:
        folded, _ = fold(
            ckpt.net, input_shape=ckpt.preprocessing.input_shape, logit_adjust_tau=tau,
            class_counts=ckpt.class_counts, deployment_prior=prior,
        )  # fmt: skip
        with torch.no_grad():
            return folded.double()(torch.from_numpy(batch).double()).numpy()

    return ckpt, batch, logits


def infer(url: str, batch: np.ndarray, parameters: dict | None = None) -> dict:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}]
    }
    if parameters is not None:
        body["parameters"] = parameters
    answer = httpx.post(f"{url}/v2/models/digits-lt/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def logits_of(answer: dict) -> np.ndarray:
    output = answer["outputs"][0]
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


def test_a_requests_tau_and_prior_equal_a_model_refolded_with_them(digits_artifact, refold, tmp_path):
    """The artifact was exported without logit adjustment; one exported with tau 0.5 is served beside it.
    Each request's answer equals the re-folded model's logits, whichever tau was folded at export."""
    _, batch, refolded = refold
    export_checkpoint(digits_artifact[0], ExportOptions(output=tmp_path / "tau05", logit_adjust_tau=0.5))
    q = np.linspace(1.0, 3.0, 10)
    for artifact in (digits_artifact[1], tmp_path / "tau05"):
        with running_server(create_app(lambda a=artifact: load_classifier(a), ServeSettings())) as (url, _):
            for parameters, expected in (
                ({"tau": 1.0}, refolded(tau=1.0)),
                ({"tau": 0.0}, refolded(tau=0.0)),
                (
                    {"prior": q.tolist()},
                    refolded(
                        tau=json.loads((artifact / "model.json").read_text())["fold"]["logit_adjust_tau"], prior=q
                    ),
                ),
                ({"tau": 1.5, "prior": q.tolist()}, refolded(tau=1.5, prior=q)),
            ):
                answer = infer(url, batch, parameters)
                np.testing.assert_allclose(logits_of(answer), expected, atol=2e-4, err_msg=str(parameters))
                assert answer["parameters"] == {
                    **({"tau": parameters["tau"]} if "tau" in parameters else {}),
                    **({"prior": "given"} if "prior" in parameters else {}),
                }


def test_without_parameters_the_answer_is_the_models_own_and_names_no_prior(digits_artifact, refold):
    _, batch, _ = refold
    classifier = load_classifier(digits_artifact[1])
    with running_server(create_app(lambda: classifier, ServeSettings())) as (url, _):
        answer = infer(url, batch)
        classify = httpx.post(f"{url}/v1/classify", files={"file": ("d.png", images.sample(3))}).json()
    assert "parameters" not in answer and "prior" not in classify
    assert np.array_equal(np.asarray(answer["outputs"][0]["data"], np.float32), classifier.predict(batch).ravel())


@pytest.fixture(scope="module")
def fake_url():
    priors = {"summer": (1.0, 1.0, 8.0)}
    with running_server(create_app(FakeClassifier, ServeSettings(priors=priors))) as (url, _):
        yield url


def one_hot_inputs(classes: list[int]) -> np.ndarray:
    """Inputs the fake classifier answers with the given top-1 classes, confidently (above 0.9)."""
    batch = FakeClassifier.voting_for(classes)
    logits = FakeClassifier.expected(batch)
    assert list(np.argmax(logits, axis=1)) == classes
    assert (np.exp(logits.max(axis=1)) / np.exp(logits).sum(axis=1)).min() > 0.9
    return batch


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"prior": [1, -1, 1]}, "prior must be finite non-negative numbers"),
        ({"prior": [1, 1]}, "prior must give one number per class (3), got 2"),
        ({"prior": "winter"}, "unknown prior 'winter'; registered: summer"),
        ({"prior": "1,nan,1"}, "prior must be a number, got 'nan'"),
        ({"tau": -0.5}, "tau must lie between 0 and 10, got -0.5"),
        ({"tau": "NaN"}, "tau must be a number, got 'NaN'"),
        ({"tau": True}, "tau must be a number, got True"),
    ],
)
def test_bad_tau_and_prior_values_are_400_with_the_reason(fake_url, parameters, message):
    batch = one_hot_inputs([0])
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": batch.ravel().tolist()}]}
    answer = httpx.post(f"{fake_url}/v2/models/fake/infer", json={**body, "parameters": parameters})
    assert answer.status_code == 400 and answer.json() == {"error": message}
    value = parameters.get("prior", parameters.get("tau"))
    if isinstance(value, str | float):  # what a query string can carry
        v1 = httpx.post(f"{fake_url}/v1/classify", params=parameters, files={"file": ("d.png", images.sample(1))})
        assert v1.status_code == 400 and v1.json() == {"error": message}


def test_a_registered_prior_by_name_over_v1_and_its_documentation(fake_url):
    fake = FakeClassifier()
    answer = httpx.post(
        f"{fake_url}/v1/classify", params={"prior": "summer", "top_k": 3}, files={"file": ("d.png", images.sample(1))}
    ).json()
    logits = FakeClassifier.expected(fake.prepare([Image.open(io.BytesIO(images.sample(1)))]))[0]
    adjusted = logits + np.log(np.array([0.1, 0.1, 0.8]))
    expected = np.exp(adjusted - adjusted.max()) / np.exp(adjusted - adjusted.max()).sum()
    assert answer["prior"] == {"prior": "summer"}
    assert {p["index"]: p["score"] for p in answer["results"][0]["predictions"]} == pytest.approx(
        dict(enumerate(expected))
    )
    config = httpx.get(f"{fake_url}/v2/models/fake/config").json()
    assert set(config["parameters"]) == {"tau", "prior"} and "summer" in config["parameters"]["prior"]["string_value"]
    assert set(httpx.get(f"{fake_url}/v2/models/fake").json()["parameters"]) == {"tau", "prior"}


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    selector = rf"\{{{re.escape(wanted)}\}}" if labels else ""
    found = re.search(rf"^{name}{selector} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_the_counters_after_a_known_sequence_of_requests():
    """cat (Many) twice, eel (Few) three times, dog (Medium) once, in three requests; confidences near 1."""
    with running_server(create_app(FakeClassifier, ServeSettings())) as (url, _):
        for classes in ([0, 2], [2, 1, 2], [0]):
            batch = one_hot_inputs(classes)
            body = {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
                ]
            }
            assert httpx.post(f"{url}/v2/models/fake/infer", json=body).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    assert [metric(text, "pih2t_predicted_class_total", **{"class": c}) for c in ("cat", "dog", "eel")] == [2, 1, 3]
    assert [metric(text, "pih2t_predicted_group_total", group=g) for g in ("many", "medium", "few")] == [2, 1, 3]
    assert metric(text, "pih2t_confidence_count", group="few") == 3
    assert metric(text, "pih2t_confidence_bucket", group="few", le="0.9") == 0  # all three above 0.9
    assert metric(text, "pih2t_label_shift_samples") == 6


def test_classes_beyond_the_label_cap_are_counted_in_their_group():
    with running_server(create_app(FakeClassifier, ServeSettings(max_class_labels=2))) as (url, _):
        batch = one_hot_inputs([2, 2, 1, 0])
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
            ]
        }
        assert httpx.post(f"{url}/v2/models/fake/infer", json=body).status_code == 200
        text = httpx.get(f"{url}/metrics").text
    assert metric(text, "pih2t_predicted_class_total", **{"class": "cat"}) == 1
    assert metric(text, "pih2t_predicted_class_total", **{"class": "dog"}) == 1
    assert metric(text, "pih2t_predicted_class_total", **{"class": "other (few)"}) == 2  # eel, the rarest


def test_the_label_shift_report_of_a_real_server_and_its_adaptation():
    """Six confident answers, all 'eel': the estimate moves to eel; with --adapt-prior and at least five
    answers seen, every answer names the adapted prior and favours eel over the model's own probabilities."""
    settings = ServeSettings(adapt_prior=True, adapt_min_samples=5)
    with running_server(create_app(FakeClassifier, settings)) as (url, _):
        batch = one_hot_inputs([2] * 6)
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
            ]
        }
        first = httpx.post(f"{url}/v2/models/fake/infer", json=body).json()
        report = httpx.get(f"{url}/v1/label-shift").json()
        second = httpx.post(f"{url}/v2/models/fake/infer", json=body).json()
    assert "parameters" not in first  # not adapted before the batch was seen
    assert report["samples"] == 6 and report["classes"] == ["cat", "dog", "eel"]
    assert report["train_prior"] == pytest.approx(np.array(COUNTS) / sum(COUNTS))
    assert report["estimated_prior"][2] > 0.9 and sum(report["estimated_prior"]) == pytest.approx(1.0)
    assert report["total_variation"] == pytest.approx(
        0.5 * np.abs(np.subtract(report["estimated_prior"], report["train_prior"])).sum()
    )
    assert report["correction"]["ready"] and report["adapting"]
    assert second["parameters"] == {"prior": "adapted", "label_shift_samples": 6}
    assert (np.asarray(second["outputs"][0]["data"]) - np.asarray(first["outputs"][0]["data"]))[2::3].min() > 0


def test_without_a_watch_the_report_is_501():
    with running_server(create_app(FakeClassifier, ServeSettings(watch=False))) as (url, _):
        answer = httpx.get(f"{url}/v1/label-shift")
    assert answer.status_code == 501 and "--no-watch" in answer.json()["error"]


def test_low_confidence_inputs_are_kept_in_a_bounded_rotating_sample(tmp_path):
    settings = ServeSettings(
        low_confidence_dir=tmp_path / "unsure", low_confidence_threshold=0.99, low_confidence_keep=3
    )
    (tmp_path / "unsure").mkdir()
    (tmp_path / "unsure" / "mine.json").write_text("{}")  # not a sample: never removed
    with running_server(create_app(FakeClassifier, settings)) as (url, _):
        for digit in (1, 2, 4, 7, 9):
            assert httpx.post(f"{url}/v1/classify", files={"file": ("d.png", images.sample(digit))}).status_code == 200
    kept = sorted(p.name for p in (tmp_path / "unsure").iterdir())
    records = [
        json.loads((tmp_path / "unsure" / name).read_text())
        for name in kept
        if name.endswith(".json") and name != "mine.json"
    ]
    assert len(records) == 3 and "mine.json" in kept
    for record in records:
        assert (tmp_path / "unsure" / record["input"]).read_bytes()[:4] == b"\x89PNG"
        assert record["top"][0]["score"] < 0.99 and record["group"] in ("many", "medium", "few")


def test_predict_applies_tau_reports_the_label_shift_and_adapts_in_two_passes(digits_artifact, refold, tmp_path):
    """pih2t-predict --tau 1 gives the re-folded model's probabilities; every summary reports the estimate of
    the images' prior; --adapt-prior scores each image with the weights its summary reports."""
    from pih2t_deploy.predict.job import run_local

    _, batch, refolded = refold
    folder = tmp_path / "in"
    folder.mkdir()
    for digit in DIGITS:
        (folder / f"{digit}.png").write_bytes(images.sample(digit))
    adjusted = run_local(digits_artifact[1], str(folder), tmp_path / "tau.jsonl", tau=1.0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "tau.jsonl").read_text().splitlines()]
    expected = refolded(tau=1.0)
    expected = np.exp(expected - expected.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for row, probabilities in zip(rows, expected, strict=True):
        assert row["scores"] == pytest.approx(probabilities[row["indices"]].tolist(), abs=1e-5)
    assert adjusted.summary["prior"] == {"tau": 1.0} and adjusted.summary["label_shift"]["samples"] == 3
    plain = run_local(digits_artifact[1], str(folder), tmp_path / "plain.jsonl", progress=False)
    adapted = run_local(digits_artifact[1], str(folder), tmp_path / "adapted.jsonl", adapt_prior=True, progress=False)
    weights = np.asarray(adapted.summary["prior"]["weights"])
    assert adapted.summary["label_shift"]["estimated_prior"] == pytest.approx(
        plain.summary["label_shift"]["estimated_prior"]
    )
    classifier = load_classifier(digits_artifact[1])
    own = classifier.probabilities(classifier.predict(batch)) * weights
    own /= own.sum(axis=1, keepdims=True)
    for row, probabilities in zip(
        (json.loads(line) for line in (tmp_path / "adapted.jsonl").read_text().splitlines()), own, strict=True
    ):
        assert row["scores"] == pytest.approx(probabilities[row["indices"]].tolist(), abs=1e-4)


def test_an_export_with_labelled_images_measures_the_reference_prior_the_server_uses(digits_artifact, tmp_path):
    export_checkpoint(digits_artifact[0], ExportOptions(output=tmp_path / "measured", eval_data="recipe"))
    measured = json.loads((tmp_path / "measured" / "model.json").read_text())["accuracy"]["label_shift"]
    assert measured["images"] == 500 and len(measured["reference_prior"]) == 10
    assert sum(measured["reference_prior"]) == pytest.approx(1.0)
    with running_server(create_app(lambda: load_classifier(tmp_path / "measured"))) as (url, _):
        httpx.post(f"{url}/v1/classify", files={"file": ("d.png", images.sample(3))})
        report = httpx.get(f"{url}/v1/label-shift").json()
    assert report["reference_basis"] == "measured on labelled images at export"
    assert report["reference_prior"] == pytest.approx(measured["reference_prior"], abs=1e-6)
