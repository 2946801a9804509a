"""`cxr view`: the routes through the ASGI test client, the server process, and a real browser.

Counts shown by the list are checked against counts computed here, directly from the manifest,
the NegBio CSV and the evaluations' predictions_study.csv and metrics.json, not through the app's
own tables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _view_fixtures import make_view_data
from cxr.mimic import schema
from cxr.stats.metrics import eval_targets

TOKEN = "test-token-abc123"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_view_data(tmp_path_factory.mktemp("view"))


@pytest.fixture(scope="module")
def app_parts(fx):
    from cxr.view.app import create_app
    from cxr.view.data import load_view_data
    from cxr.view.images import Pixels, find_cache

    data = load_view_data(fx.manifest, [fx.eval_dir, fx.eval_dir_b], fx.root)
    pixels = Pixels(data, find_cache(fx.root, None), fx.root / "interim" / "view-heatmaps", "cpu")
    return data, pixels, create_app(data, pixels, TOKEN)


@pytest.fixture(scope="module")
def client(app_parts):
    from starlette.testclient import TestClient

    c = TestClient(app_parts[2])
    assert c.get(f"/?token={TOKEN}").status_code == 200  # sets the cookie
    return c


def _total(client, **params) -> int:
    r = client.get("/", params=params)
    assert r.status_code == 200, r.text
    return int(re.search(r'id="total">(\d+)<', r.text).group(1))


# --------------------------------------------------------------------------- direct counts


def _studies(fx) -> pl.DataFrame:
    return (
        pl.read_parquet(fx.manifest)
        .group_by("study_id", maintain_order=True)
        .first()
        .sort("study_id")
    )


def _outcomes(fx, eval_dir: Path, label: str) -> pl.DataFrame:
    """study_id, outcome of `label` at the evaluation's threshold (CheXpert labels, uncertain
    excluded, blank negative), from the manifest and predictions_study.csv alone."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["protocol"]["labels"] == "chexpert"
    assert metrics["protocol"]["uncertain"] == "exclude"
    t = metrics["labels"][label]["threshold"]
    preds = pl.read_csv(eval_dir / "predictions_study.csv").select("study_id", label)
    joined = preds.join(_studies(fx).select("study_id", pl.col(label).alias("raw")), on="study_id")
    y = eval_targets(joined["raw"].to_numpy().astype(np.float64)[:, None], "exclude")[:, 0]
    p = joined[label].to_numpy()
    out = np.full(len(y), None, dtype=object)
    ok = ~np.isnan(y)
    out[ok & (p >= t) & (y == 1)] = "TP"
    out[ok & (p >= t) & (y == 0)] = "FP"
    out[ok & (p < t) & (y == 1)] = "FN"
    out[ok & (p < t) & (y == 0)] = "TN"
    return pl.DataFrame({"study_id": joined["study_id"], "outcome": out.tolist()})


def test_split_view_and_label_value_counts_match_the_manifest(fx, client):
    s = _studies(fx)
    for split in ("train", "validate", "test"):
        assert _total(client, split=split) == s.filter(pl.col("split") == split).height
    assert _total(client, view="PA") == s.height
    for label in ("Edema", "No Finding", "Support Devices"):
        col = s[label]
        expected = {
            "1": int((col == 1).sum()),
            "0": int((col == 0).sum()),
            "-1": int((col == -1).sum()),
            "blank": int(col.is_null().sum() + col.is_nan().sum()),
        }
        assert sum(expected.values()) == s.height
        for value, n in expected.items():
            assert _total(client, label=label, value=value) == n
        test = s.filter(pl.col("split") == "test")[label]
        assert _total(client, split="test", label=label, value="1") == int((test == 1).sum())


def test_outcome_counts_match_predictions_study_csv(fx, client):
    seen = set()
    for label in schema.LABELS:
        outcomes = _outcomes(fx, fx.eval_dir, label)
        for outcome in ("TP", "FP", "FN", "TN"):
            n = outcomes.filter(pl.col("outcome") == outcome).height
            seen.add((outcome, n > 0))
            assert _total(client, label=label, eval="0", outcome=outcome) == n, (label, outcome)
    assert ("FP", True) in seen and ("TN", True) in seen  # the check compared non-zero counts


def test_outcome_of_the_second_evaluation_and_agreement(fx, client):
    label = "Pleural Effusion"
    a = _outcomes(fx, fx.eval_dir, label)
    b = _outcomes(fx, fx.eval_dir_b, label)
    for outcome in ("FP", "TN"):
        n = b.filter(pl.col("outcome") == outcome).height
        assert _total(client, label=label, eval="1", outcome=outcome) == n
    both = a.join(b, on="study_id", suffix="_b").drop_nulls()
    pos_a = both["outcome"].is_in(["TP", "FP"])
    pos_b = both["outcome_b"].is_in(["TP", "FP"])
    right_a = both["outcome"].is_in(["TP", "TN"])
    right_b = both["outcome_b"].is_in(["TP", "TN"])
    q = {"label": label, "eval": "0", "other": "1"}
    assert _total(client, **q, agreement="same") == int((pos_a == pos_b).sum())
    assert _total(client, **q, agreement="differ") == int((pos_a != pos_b).sum())
    assert _total(client, **q, agreement="a_right") == int((right_a & ~right_b).sum())
    assert _total(client, **q, agreement="b_right") == int((right_b & ~right_a).sum())
    assert int((pos_a != pos_b).sum()) > 0


def test_disagreement_between_label_sources(fx, client):
    s = _studies(fx).select("study_id", *schema.LABELS)
    negbio = pl.read_csv(fx.raw / f"{schema.NEGBIO_CSV}.gz", infer_schema=False).select(
        pl.col("study_id").cast(pl.Int64), *[pl.col(lab).cast(pl.Float64) for lab in schema.LABELS]
    )
    rad = pl.read_csv(fx.raw / schema.RADIOLOGIST_CSV, infer_schema=False)
    rad = rad.rename({"Airspace Opacity": "Lung Opacity"}).select(
        pl.col("study_id").cast(pl.Int64), *[pl.col(lab).cast(pl.Float64) for lab in schema.LABELS]
    )
    label = "Edema"
    values = {}
    for _name, table in (("chexpert", s), ("negbio", negbio), ("radiologist", rad)):
        for sid, v in table.select("study_id", label).iter_rows():
            values.setdefault(sid, []).append(0.0 if v is None or v != v else v)
    ids = set(s["study_id"].to_list())
    expected = sum(1 for sid, v in values.items() if sid in ids and len(set(v)) > 1)
    assert expected > 0
    assert _total(client, label=label, disagree="1") == expected
    # The radiologists' values as the filtered source: only the studies they labelled count.
    n_rad_pos = int((rad[label] == 1).sum())
    assert _total(client, label=label, source="radiologist", value="1") == n_rad_pos


def test_sorting_by_probability_and_by_error(fx, client):
    label = "Consolidation"
    preds = pl.read_csv(fx.eval_dir / "predictions_study.csv")
    r = client.get("/", params={"label": label, "sort": "prob", "per_page": "500"})
    shown = [int(x) for x in re.findall(r"class=study>(\d+)<", r.text)]
    p = dict(zip(preds["study_id"], preds[label], strict=True))
    probs = [p[sid] for sid in shown if sid in p]
    assert len(probs) == preds.height and probs == sorted(probs, reverse=True)
    assert all(sid in p for sid in shown[: len(probs)])  # studies without a probability last
    r = client.get("/", params={"label": label, "sort": "error", "split": "test"})
    raw = dict(_studies(fx).select("study_id", label).iter_rows())
    shown = [int(x) for x in re.findall(r"class=study>(\d+)<", r.text)]
    errors = []
    for sid in shown:
        y = eval_targets(np.array([[np.nan if raw[sid] is None else raw[sid]]]), "exclude")[0, 0]
        errors.append(None if np.isnan(y) else abs(y - p[sid]))
    ranked = [e for e in errors if e is not None]
    assert errors[: len(ranked)] == ranked  # excluded targets (uncertain) last
    assert ranked == sorted(ranked, reverse=True) and len(ranked) > 3


def test_pagination_and_csv_export(fx, client):
    s = _studies(fx)
    r = client.get("/", params={"per_page": "10", "page": "2"})
    shown = [int(x) for x in re.findall(r"class=study>(\d+)<", r.text)]
    assert shown == s["study_id"].to_list()[10:20]
    label = "Consolidation"
    fp = _outcomes(fx, fx.eval_dir, label).filter(pl.col("outcome") == "FP")
    r = client.get("/export.csv", params={"label": label, "outcome": "FP"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    exported = pl.read_csv(r.content)
    assert exported.columns == ["study_id", "dicom_id"]
    images = pl.read_parquet(fx.manifest).join(fp, on="study_id", how="semi")
    assert sorted(exported["dicom_id"].to_list()) == sorted(images["dicom_id"].to_list())
    assert exported.height > 0


def test_bad_queries_are_one_line_on_the_page(client):
    for params, words in (
        ({"label": "Edema", "value": "2"}, "value"),
        ({"label": "Nope"}, "label"),
        ({"outcome": "FP"}, "choose a label"),
        ({"label": "Edema", "eval": "7"}, "eval"),
        ({"page": "x"}, "page"),
    ):
        r = client.get("/", params=params)
        assert r.status_code == 400
        assert words in re.search(r'id="query-error">([^<]*)<', r.text).group(1)


# --------------------------------------------------------------------------- access


def test_every_route_needs_the_token(fx, app_parts):
    from starlette.testclient import TestClient

    dicom = pl.read_parquet(fx.manifest)["dicom_id"][0]
    study = pl.read_parquet(fx.manifest)["study_id"][0]
    paths = ["/", "/export.csv", f"/study/{study}", f"/image/{dicom}/thumb", "/app.js"]
    paths += [f"/image/{dicom}/full", f"/heatmap/0/{dicom}/0", "/nowhere"]
    fresh = TestClient(app_parts[2])
    for path in paths:
        assert fresh.get(path).status_code == 403, path
        assert fresh.get(path, params={"token": "wrong"}).status_code == 403, path
        wrong = TestClient(app_parts[2], cookies={"cxr_view_token": "wrong"})
        assert wrong.get(path).status_code == 403, path
    assert fresh.get("/", params={"token": TOKEN}).status_code == 200  # then the cookie suffices
    assert fresh.get(f"/image/{dicom}/thumb").status_code == 200


def test_token_in_the_address_becomes_a_cookie_and_leaves_the_address(app_parts):
    from starlette.testclient import TestClient

    fresh = TestClient(app_parts[2])
    r = fresh.get("/", params={"token": TOKEN, "split": "test"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/?split=test"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_404_outside_the_manifest_and_for_path_like_ids(fx, client):
    m = pl.read_parquet(fx.manifest)
    dicom, rel = m["dicom_id"][0], m["image_path"][0]
    outside = "00000000-11111111-22222222-33333333-44444444"
    assert outside not in set(m["dicom_id"].to_list())
    bad_ids = [
        outside,
        "..",
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        rel.replace("/", "%2F"),
        f"{dicom}.jpg",
        f"{dicom}%00",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
    ]
    for bad in bad_ids:
        for path in (f"/image/{bad}/thumb", f"/image/{bad}/full", f"/heatmap/0/{bad}/0"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert b"root:" not in r.content
    assert client.get(f"/image/{dicom}/other").status_code == 404
    assert client.get(f"/heatmap/5/{dicom}/0").status_code == 404
    assert client.get(f"/heatmap/0/{dicom}/99").status_code == 404
    for sid in ("12345678", "abc", "..%2F..", str(m["study_id"][0]) + "0"):
        assert client.get(f"/study/{sid}").status_code == 404, sid
    assert client.get(f"/image/{dicom}/thumb").status_code == 200


def test_responses_carry_no_store_and_the_access_log_drops_the_token(fx, app_parts, caplog):
    from starlette.testclient import TestClient

    c = TestClient(app_parts[2])
    with caplog.at_level(logging.INFO, logger="cxr.view.access"):
        r = c.get("/", params={"token": TOKEN, "label": "Edema"})
        c.get("/nowhere")
        c.get("/", params={"token": "a-wrong-guess"})
    assert r.status_code == 200
    for resp in (r, c.get("/nowhere"), c.get(f"/image/{_studies(fx)['dicom_id'][0]}/thumb")):
        assert "no-store" in resp.headers["cache-control"]
        assert resp.headers["x-content-type-options"] == "nosniff"
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "cxr.view.access"]
    assert any('"GET /?label=Edema" 303' in line for line in lines)
    assert any('"GET /?label=Edema" 200' in line for line in lines)
    assert not any(TOKEN in line or "a-wrong-guess" in line for line in lines)


def test_no_subject_id_in_any_response(fx, client, caplog):
    m = pl.read_parquet(fx.manifest)
    texts = []
    with caplog.at_level(logging.INFO, logger="cxr.view.access"):
        for params in ({}, {"per_page": "500"}, {"label": "Edema", "sort": "prob"}):
            r = client.get("/", params=params)
            texts.append(r.text + str(r.headers))
        texts.append(client.get("/export.csv", params={"per_page": "500"}).text)
        for sid in m["study_id"].unique().to_list():
            r = client.get(f"/study/{sid}")
            assert r.status_code == 200
            texts.append(r.text + str(r.headers))
        texts.append(client.get("/app.js").text)
        for path in m["image_path"].to_list()[:3]:  # a path asked for: 404, not echoed
            texts.append(client.get(f"/image/{path.replace('/', '%2F')}/full").text)
    texts += [rec.getMessage() for rec in caplog.records]
    blob = "\n".join(texts)
    assert "Findings" in blob or "findings" in blob  # the pages were really read
    for subject in fx.subject_ids:
        assert str(subject) not in blob


# --------------------------------------------------------------------------- the study page


def test_study_page_has_images_report_labels_and_probabilities(fx, client):
    m = pl.read_parquet(fx.manifest)
    preds = pl.read_csv(fx.eval_dir / "predictions_study.csv")
    sid = preds["study_id"][0]
    r = client.get(f"/study/{sid}")
    assert r.status_code == 200
    for dicom in m.filter(pl.col("study_id") == sid)["dicom_id"].to_list():
        assert f'src="/image/{dicom}/thumb"' in r.text
    impression = m.filter(pl.col("study_id") == sid)["impression"][0]
    labeler = re.search(r'id="labeler-text">([^<]*)<', r.text).group(1)
    assert impression and labeler.startswith(impression[:30].replace("'", "&#x27;"))
    for label in ("Edema", "Pneumothorax"):
        p = f"{preds.filter(pl.col('study_id') == sid)[label][0]:.3f}"
        assert re.search(rf'data-eval="0" data-label="{label}">{re.escape(p)}<', r.text)


def test_images_thumbnail_full_and_heatmap_cached_on_disk(fx, app_parts, client):
    import io

    from PIL import Image

    data, pixels, _ = app_parts
    m = pl.read_parquet(fx.manifest)
    dicom, rel = m["dicom_id"][0], m["image_path"][0]
    thumb = Image.open(io.BytesIO(client.get(f"/image/{dicom}/thumb").content))
    assert thumb.size == (256, 256)
    full = client.get(f"/image/{dicom}/full")
    assert full.headers["content-type"] == "image/jpeg"
    assert full.content == (fx.raw / rel).read_bytes()
    label = data.evals[0].labels.index("Edema")
    path = pixels.heatmap_path(data.evals[0], dicom, "Edema")
    if path.exists():
        path.unlink()
    first = client.get(f"/heatmap/0/{dicom}/{label}")
    assert first.status_code == 200 and path.is_file()
    assert path.parent.parent == fx.root / "interim" / "view-heatmaps"
    assert Image.open(io.BytesIO(first.content)).mode == "RGB"
    path.write_bytes(first.content + b"")  # the second answer comes from the file
    assert client.get(f"/heatmap/0/{dicom}/{label}").content == path.read_bytes()


# --------------------------------------------------------------------------- the command


def test_remote_host_needs_allow_remote(fx, capsys):
    from cxr.cli import main
    from cxr.view.server import check_host

    assert check_host("127.0.0.1", False) is None and check_host("::1", False) is None
    assert "warning" in check_host("0.0.0.0", True)
    rc = main(["--data-dir", str(fx.root), "view", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert rc == 1 and "--allow-remote" in err and err.count("\n") == 1


def test_view_serves_the_address_and_stops_on_ctrl_c(fx):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr",
            "--data-dir",
            str(fx.root),
            "view",
            str(fx.eval_dir),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = ""
        deadline = time.time() + 120
        while "open http" not in line and time.time() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        url = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line).group(1)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        with opener.open(url, timeout=30) as resp:
            assert resp.status == 200 and b"studies match" in resp.read()
        token = url.split("token=")[1]
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err.splitlines()[-1] == "cxr view: stopped"
    assert "Traceback" not in err and token not in err
    assert '"GET /" 200' in err  # the access log, without the token


# --------------------------------------------------------------------------- a real browser


def _chromedriver() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def live_server(app_parts):
    import uvicorn

    from cxr.view.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app_parts[2], access_log=False, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


def test_browser_filters_false_positives_and_shows_a_heatmap(fx, app_parts, live_server, tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver) through the demo-like data.

    With CXR_VIEW_SCREENSHOT=PATH set, the screenshot is also saved there (docs/view.png).
    """
    found = _chromedriver()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium or chromedriver is missing in CI (.ci/run installs them)")
        pytest.skip("chromium or chromedriver not installed (apt-get install chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    data = app_parts[0]
    label = "Consolidation"
    fp = _outcomes(fx, fx.eval_dir, label).filter(pl.col("outcome") == "FP")
    assert fp.height > 0
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{live_server}/?token={TOKEN}")
        assert "token" not in driver.current_url  # the redirect took it out of the address
        Select(driver.find_element(By.ID, "f-label")).select_by_value(label)
        Select(driver.find_element(By.ID, "f-eval")).select_by_value("0")
        Select(driver.find_element(By.ID, "f-outcome")).select_by_value("FP")
        driver.find_element(By.ID, "apply").click()
        wait.until(lambda d: "outcome=FP" in d.current_url)
        assert int(driver.find_element(By.ID, "total").text) == fp.height
        links = driver.find_elements(By.CSS_SELECTOR, "a.study")
        assert {int(a.text) for a in links} == set(fp["study_id"].to_list())
        sid = int(links[0].text)
        links[0].click()
        wait.until(lambda d: d.find_elements(By.ID, "labels"))
        img = driver.find_element(By.CSS_SELECTOR, "img.xray")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0)
        button = driver.find_element(
            By.CSS_SELECTOR, f'button[data-heatmap="0/{data.evals[0].labels.index(label)}"]'
        )
        button.click()
        wait.until(lambda d: "heatmap: " + label in d.find_element(By.ID, "status").text)
        wait.until(
            lambda d: d.execute_script(
                "return arguments[0].src.startsWith('blob:') && arguments[0].complete "
                "&& arguments[0].naturalWidth > 0",
                img,
            )
        )
        report = driver.find_element(By.ID, "report").text
        impression = _studies(fx).filter(pl.col("study_id") == sid)["impression"][0]
        assert impression and impression.split("\n")[0][:40] in report
        p = pl.read_csv(fx.eval_dir / "predictions_study.csv").filter(pl.col("study_id") == sid)
        shown = driver.find_element(
            By.CSS_SELECTOR, f'span.prob[data-eval="0"][data-label="{label}"]'
        ).text
        assert shown == f"{p[label][0]:.3f}"
        shot = tmp_path / "view.png"
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10
    # The heatmap's colours (jet) are on the page: some clearly non-grey pixels.
    assert (np.ptp(pixels, axis=2) > 80).sum() > 500
    target = os.environ.get("CXR_VIEW_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
