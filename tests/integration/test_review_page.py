"""The review loop end to end in a real browser (headless Debian Chromium, scripts/setup_browser.sh) against serve.py
on 127.0.0.1: three images predicted on the inspection page, a good one the model flags reviewed as OK on the review
page (keyboard shortcut), a defect confirmed, a candidate version built and compared, activated, and the same image
predicted again: now OK. Screenshots are kept in test-artifacts/ (review_*.png)."""
import hashlib
import os
import shutil

import httpx
import pytest

from conftest import ROOT, chromium

CATEGORY = "synthetic_leather"
TOKEN = "page-token-7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(small_model, tmp_path):
    """(base URL, model folder): serve.py on a copy of the small model, with records and a token."""
    from src.app.serve import launch, shut_down
    model_dir = tmp_path / "model"
    shutil.copytree(small_model[0], model_dir)
    process, url = launch(model_dir, "--records", str(tmp_path / "records"), "--max_batch", "1",
                          env=dict(os.environ, PATCHCORE_TOKEN=TOKEN))
    yield url, model_dir
    shut_down(process)


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "profile", 1400, 1300)
    yield driver
    driver.quit()


def upload(driver, url, paths):
    """{file name: label} of ``paths`` uploaded together on the inspection page (names must differ)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(f"{url}/")
    driver.find_element(By.ID, "files").send_keys("\n".join(str(path) for path in paths))
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result canvas")) == len(paths))
    return {box.find_element(By.CSS_SELECTOR, ".name").text: box.find_element(By.CSS_SELECTOR, ".label").text
            for box in driver.find_elements(By.CSS_SELECTOR, ".result")}


def record_of(url, path):
    """The newest record of the image at ``path`` (matched by sha256)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    items = httpx.get(f"{url}/records", headers=AUTH, params={"limit": 500}).json()["items"]
    return next(item for item in items if item["image_sha256"] == digest)


def shot(driver, name):
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(artifacts / name))


def review_by_key(browser, record, key):
    """Select ``record`` in the review page's queue, then press ``key`` (the verdict's shortcut)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.find_element(By.CSS_SELECTOR, f'.queue-item[data-id="{record["id"]}"]').click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "view").get_attribute("data-record") ==
                                     record["id"] and "Not reviewed" in d.find_element(By.ID, "facts").text)
    if key == "o":
        shot(browser, "review_queue.png")
    browser.find_element(By.TAG_NAME, "body").send_keys(key)
    WebDriverWait(browser, 10).until(lambda d: not d.find_elements(
        By.CSS_SELECTOR, f'.queue-item[data-id="{record["id"]}"]'))   # gone from the "not reviewed" queue


@pytest.mark.browser
def test_a_false_alarm_reviewed_on_the_page_becomes_ok_once_its_version_is_activated(served, browser,
                                                                                     small_dataset):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    url, model_dir = served
    test = small_dataset / CATEGORY / "test"
    paths = [test / "good" / "000.png", test / "scratch" / "001.png", test / "good" / "002.png"]
    labels = upload(browser, url, paths)
    assert labels[paths[0].name] == "NG" and labels[paths[1].name] != "OK", labels   # the seeded model flags a good image
    false_alarm, defect = record_of(url, paths[0]), record_of(url, paths[1])

    browser.get(f"{url}/review")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "user").send_keys("anna")
    browser.find_element(By.ID, "connect").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "queue").get_attribute("data-ready"))
    queued = [row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, ".queue-item")]
    assert false_alarm["id"] in queued and defect["id"] in queued and len(queued) == 2   # OK images are not queued
    review_by_key(browser, false_alarm, "o")   # a screenshot of the queue before the key
    review_by_key(browser, defect, "d")
    reviews = httpx.get(f"{url}/review/queue", headers=AUTH, params={"reviewed": True}).json()["items"]
    assert {item["id"]: item["review"]["verdict"] for item in reviews} == {false_alarm["id"]: "false_alarm",
                                                                           defect["id"]: "defect"}

    Select(browser.find_element(By.ID, "reviewed")).select_by_value("")   # all: the reviewed ones with verdicts
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".queue-item")) == 2)
    browser.find_element(By.ID, "build").click()
    WebDriverWait(browser, 240).until(
        lambda d: d.find_elements(By.ID, "update-state") and
        d.find_element(By.ID, "update-state").get_attribute("data-state") != "building")
    assert browser.find_element(By.ID, "update-state").get_attribute("data-state") == "ready", \
        browser.find_element(By.ID, "update-state").text
    summary = browser.find_element(By.ID, "comparison-summary").text
    assert "1 of 1 false alarm(s) become OK" in summary, summary
    rows = {row.get_attribute("data-id"): row.text for row in browser.find_elements(By.CSS_SELECTOR,
                                                                                      "#comparison tr[data-id]")}
    assert set(rows) == {false_alarm["id"], defect["id"]}
    assert httpx.get(f"{url}/model").json()["model"]["version"] == 1   # built, not active
    assert "version 2" not in browser.find_element(By.ID, "serving").text
    shot(browser, "review_comparison.png")

    browser.find_element(By.ID, "activate-2").click()
    WebDriverWait(browser, 120).until(lambda d: "Version 2 is active" in d.find_element(By.ID, "message").text)
    assert httpx.get(f"{url}/model").json()["model"]["version"] == 2
    actions = [(entry["actor"], entry["action"]) for entry in
               httpx.get(f"{url}/audit", headers=AUTH).json()["entries"]]
    assert actions == [("anna", "activate"), ("anna", "update_ready"), ("anna", "update"), ("anna", "review"),
                       ("anna", "review")]
    shot(browser, "review_activated.png")

    again = upload(browser, url, [paths[0]])
    assert again[paths[0].name] == "OK"
    assert record_of(url, paths[0])["model"]["version"] == 2
    shot(browser, "review_predicted_again.png")
