"""pih2t-demo: gradio_client against a live demo on 127.0.0.1, and a real headless Chromium."""

from __future__ import annotations

import os
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.demo import GROUP_NAMES, DemoSettings, LongTailExplainer, build_demo
from pih2t_deploy.serving.process import free_port
from tests import images
from tests.browser import headless_chromium
from tests.helpers import run_cli

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="module")
def demo_url(digits_artifact):
    classifier = load_classifier(digits_artifact[1])
    demo = build_demo(classifier, DemoSettings(max_file_mb=0.05))
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        max_file_size=50_000,
        show_error=True,
        quiet=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url
    finally:
        demo.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _top(result):
    label = result[0]
    return label["label"], {c["label"]: c["confidence"] for c in label["confidences"]}


def test_predict_matches_onnxruntime_top1(demo_url, digits_artifact, tmp_path):
    from gradio_client import handle_file

    classifier = load_classifier(digits_artifact[1])
    client = _client(demo_url)
    for digit in (0, 3, 6):
        path = tmp_path / f"d{digit}.png"
        path.write_bytes(images.sample(digit))
        best, confidences = _top(client.predict(handle_file(str(path)), 0.0, api_name="/predict"))
        logits = classifier.predict(classifier.prepare([Image.open(path)]))[0]
        expected = classifier.info.labels[int(np.argmax(logits))]
        assert best.split(" (")[0] == expected
        assert best.endswith(("(Many)", "(Medium)", "(Few)"))
        assert sum(confidences.values()) <= 1.0 + 1e-6


def test_tau_reranks_as_the_math_says(demo_url, digits_artifact, tmp_path):
    """p_tau(k) is proportional to p(k) / prior(k)^tau: the ratio of two classes' probabilities must follow."""
    from gradio_client import handle_file

    classifier = load_classifier(digits_artifact[1])
    explainer = LongTailExplainer(classifier)
    path = tmp_path / "d5.png"
    path.write_bytes(images.sample(5))
    client = _client(demo_url)
    _, at0 = _top(client.predict(handle_file(str(path)), 0.0, api_name="/predict"))
    _, at1 = _top(client.predict(handle_file(str(path)), 1.0, api_name="/predict"))
    common = [label for label in at0 if label in at1][:2]
    assert len(common) == 2
    index = {f"{classifier.info.labels[i]} ({GROUP_NAMES[g]})": i for i, g in enumerate(explainer.groups)}
    a, b = (index[label] for label in common)
    expected_ratio = (at0[common[0]] / at0[common[1]]) * np.exp(-(explainer.log_prior[a] - explainer.log_prior[b]))
    assert at1[common[0]] / at1[common[1]] == pytest.approx(expected_ratio, rel=1e-3)
    tail_share = lambda conf: sum(v for k, v in conf.items() if k.endswith("(Few)"))  # noqa: E731
    assert tail_share(at1) >= tail_share(at0)


def test_the_tau_slider_gives_the_numbers_of_an_export_with_logit_adjust(digits_artifact, tmp_path):
    """The demo adjusts the unadjusted model's log-probabilities by tau * log prior at run time; pih2t-export
    --logit-adjust folds the same term into the bias. Both go through one long-tail module, so the
    probabilities agree for every class."""
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions

    export_checkpoint(digits_artifact[0], ExportOptions(output=tmp_path / "adjusted", logit_adjust_tau=0.7))
    explainer = LongTailExplainer(load_classifier(digits_artifact[1]))
    adjusted = load_classifier(tmp_path / "adjusted")
    labels = adjusted.info.labels
    for digit in (1, 5, 9):
        path = tmp_path / f"d{digit}.png"
        path.write_bytes(images.sample(digit))
        shown = explainer.ranked(explainer.scores(path), tau=0.7, k=10)
        exported = adjusted.probabilities(adjusted.predict(adjusted.prepare([Image.open(path)])))[0]
        by_label = {key.split(" (")[0]: value for key, value in shown.items()}
        assert [by_label[label] for label in labels] == pytest.approx(exported.tolist(), abs=1e-5)


def test_corrupt_and_oversize_files_get_a_clean_error(demo_url, tmp_path):
    from gradio_client import handle_file

    client = _client(demo_url)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(images.truncated_png()[:2000])
    with pytest.raises(Exception, match=r"corrupt\.png is truncated or corrupt \(image file is truncated\)") as caught:
        client.predict(handle_file(str(corrupt)), 0.0, api_name="/predict")
    assert type(caught.value).__name__ == "AppError" and "Traceback" not in str(caught.value)
    big = tmp_path / "big.png"
    big.write_bytes(
        images.encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)))
    )
    with pytest.raises(Exception, match=r"(?i)size|large|exceed"):
        client.predict(handle_file(str(big)), 0.0, api_name="/predict")
    assert httpx.get(demo_url).status_code == 200


def test_a_real_browser_uploads_an_image_and_sees_the_label(demo_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium(tmp_path / "profile") as driver:
        driver.get(demo_url)
        upload = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
        picture = tmp_path / "digit_2.png"
        Image.open(images.SAMPLES / "digit_2.png").resize((128, 128), Image.NEAREST).save(picture)
        upload.send_keys(str(picture))
        time.sleep(1.0)
        button = next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Classify")
        button.click()

        def label_shown(d) -> bool:
            return re.search(r"\b\d \((Many|Medium|Few)\)", d.find_element(By.TAG_NAME, "body").text) is not None

        WebDriverWait(driver, 60).until(label_shown)
        driver.save_screenshot(str(tmp_path / "demo.png"))
        assert (tmp_path / "demo.png").stat().st_size > 10_000
        visible = driver.find_element(By.TAG_NAME, "body").text
        assert re.search(r"\b\d \((Many|Medium|Few)\)", visible), visible


def test_demo_cli_refuses_share_links_and_bad_examples(tmp_path, digits_artifact):
    for args, message in (
        (["--share", "always"], "--share must be 'never'"),
        (["--examples", str(tmp_path / "none")], "is not a folder"),
    ):
        done = run_cli("demo", "--model", str(digits_artifact[1]), *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_top_k_shown_is_ranked_by_the_adjusted_probabilities():
    """Three classes with 120, 30 and 6 training images. As tau grows, the tail class 'eel' climbs: at tau 0
    the top two are cat and dog; at tau 1.5 eel leads and cat drops out of the top two."""
    from tests.fakes import FakeClassifier

    explainer = LongTailExplainer(FakeClassifier())
    log_probs = np.log(np.array([0.6, 0.3, 0.1]))
    assert list(explainer.ranked(log_probs, tau=0.0, k=2)) == ["cat (Many)", "dog (Medium)"]
    adjusted = explainer.ranked(log_probs, tau=1.5, k=2)
    weights = np.array([0.6, 0.3, 0.1]) * np.array([120, 30, 6], dtype=float) ** -1.5
    expected = weights / weights.sum()
    assert list(adjusted) == ["eel (Few)", "dog (Medium)"]
    assert list(adjusted.values()) == pytest.approx([expected[2], expected[1]])


def test_examples_come_from_the_models_own_test_data_or_there_are_none(tmp_path):
    from pih2t_deploy.serving.demo import SAMPLES, default_examples

    assert default_examples({"data": {"source": "digits-lt"}}) == sorted(SAMPLES.glob("*.png"))
    for name in ("cat", "dog"):
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "test" / name / "b.png")
        Image.new("RGB", (4, 4)).save(tmp_path / "test" / name / "a.jpg")
    (tmp_path / "test" / "dog" / "notes.txt").write_text("not an image")
    found = default_examples({"data": {"source": "imagefolder", "root": str(tmp_path)}})
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["test/cat/a.jpg", "test/dog/a.jpg"]
    assert default_examples({"data": {"source": "imagefolder", "root": str(tmp_path / "gone")}}) == []
    assert default_examples({"recipe": "authors-h2t-import"}) == []
