"""OHIF (the build that ships with monailabel) in headless Chromium against Orthanc + MONAI Label:
study list, open a study in the MONAI Label mode, run liver_cascade, see it drawn, export the DICOM SEG."""

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_helpers import series_uid

CHROMIUM = "/usr/bin/chromium"
# the closed network: no sandbox (root in CI), no GPU, nothing that phones home
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}


@pytest.fixture
def page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements.txt) is not installed")
    with sync_api.sync_playwright() as pw:  # launch() gives every run a fresh --user-data-dir
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport=VIEWPORT)
        pg.route("**/fonts.googleapis.com/**", lambda route: route.abort())  # offline: fail fast
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        yield pg
        browser.close()


def tinted_pixels(png: bytes) -> int:
    """Pixels clearly off the grey scale (segment colours over CT), in a screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] - rgb[..., 2]) > 40).sum())


def test_ohif_run_liver_cascade_and_export_seg(tmp_path, page, phantom_series, orthanc, dicomweb_server):
    import pydicom_seg
    import SimpleITK as sitk

    from lib.settings import LABEL_COLORS, LABELS

    shots = tmp_path / "screenshots"
    shots.mkdir()
    uid = series_uid(phantom_series, "phantom_000")
    url = dicomweb_server.url

    # study list: both phantom patients, from Orthanc through MONAI Label's DICOMweb proxy
    page.goto(f"{url}/ohif/", wait_until="domcontentloaded")
    row = page.get_by_text("Phantom, phantom_000", exact=True).first
    row.wait_for(timeout=60000)
    assert page.get_by_text("Phantom, phantom_001", exact=True).first.is_visible()
    page.screenshot(path=str(shots / "1_study_list.png"))

    # open the study in the MONAI Label mode
    row.click()
    page.get_by_role("button", name="MONAI Label").click()
    page.wait_for_url("**/ohif/monai-label?StudyInstanceUIDs=*", timeout=60000)
    page.get_by_role("button", name="Confirm and Hide").click()
    axial = page.locator("[data-viewport-uid='mpr-axial']")
    axial.wait_for(timeout=60000)
    page.wait_for_timeout(3000)  # the volume streams in
    before = tinted_pixels(axial.screenshot())

    # connect the panel to our server and run liver_cascade
    page.locator("#monailabelServerURL").fill(url + "/")
    page.locator("#monailabelServerURL").locator("xpath=../../td[3]/button").click()
    tab = page.locator("div.tab", has=page.locator("label.tab-label", has_text="Auto-Segmentation"))
    tab.locator(".modelSelector select").select_option("liver_cascade")
    tab.locator(".modelSelector button", has_text="Run").click()
    page.get_by_text("Running Segmentation - Successful").wait_for(timeout=180000)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "2_liver_cascade.png"))
    after = tinted_pixels(axial.screenshot())
    assert after > before + 500, (before, after)  # the liver is drawn in colour over the grey CT

    # OHIF's segmentation panel lists our segments; export them as DICOM SEG to Orthanc
    page.locator("[data-cy='panelSegmentation-btn']").click()
    for name in LABELS:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30000)
    page.screenshot(path=str(shots / "3_segmentation_panel.png"))
    page.locator("button:has(svg title:text-is('icon-more'))").filter(visible=True).first.click()
    page.get_by_text("Export & Download").hover()
    page.get_by_text("Export DICOM SEG").click()
    page.locator("input[data-cy='input-undefined']").fill("liver_cascade OHIF")
    page.get_by_role("button", name="Save").click()
    seg = None
    t0 = time.time()
    while seg is None and time.time() - t0 < 60:
        segs = [pydicom.dcmread(io.BytesIO(b)) for b in orthanc.instance_files("SEG")]
        seg = next((s for s in segs if s.ReferencedSeriesSequence[0].SeriesInstanceUID == uid), None)
        time.sleep(1)
    page.screenshot(path=str(shots / "4_exported.png"))
    assert seg is not None, f"no SEG referencing {uid} in Orthanc; page errors: {page.errors}"
    assert seg.SeriesDescription == "liver_cascade OHIF"
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segments) == set(LABELS)
    ours = pydicom_seg.template.rgb_to_cielab(list(LABEL_COLORS["liver"]))  # OHIF's liver colour is Slicer's, as ours
    assert np.abs(np.subtract(list(segments["liver"].RecommendedDisplayCIELabValue), ours)).max() <= 8

    # MONAI Label now lists the series as labelled; its label (read from OHIF's SEG) is what the model drew
    stats = requests.get(f"{url}/datastore/", params={"output": "stats"}).json()
    assert stats["completed"] >= 1 and stats["total"] == 2, stats
    train = requests.get(f"{url}/datastore/", params={"output": "train"}).json()  # fetches the SEG as a label
    pair = next(p for p in train if Path(p["image"]).name.startswith(uid))
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}).json()["objects"]
    assert objects[uid]["labels"]["final"]["info"]["seg_series"] == [seg.SeriesInstanceUID]
    r = requests.post(f"{url}/infer/liver_cascade", params={"image": uid, "output": "image"}, timeout=300,
                      files={"params": (None, '{"result_extension": ".nii.gz"}')})
    (tmp_path / "model.nii.gz").write_bytes(r.content)
    drawn = sitk.GetArrayFromImage(sitk.ReadImage(pair["label"]))
    model = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "model.nii.gz")))
    for value in LABELS.values():
        a, b = drawn == value, model == value
        if b.sum() > 50:
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98, value
    assert not page.errors, page.errors
    print(f"screenshots: {shots}")
