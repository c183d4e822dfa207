# liver_cascade: two commands do all the set-up.
#   make serve   venv + install + sample data + MONAI Label server on 127.0.0.1:8000
#   make test    the same set-up, then the whole test suite
#   make serve-dicomweb   Orthanc (DICOMweb) with the DICOM series + MONAI Label on it, for OHIF
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SAMPLE := sample-data/generated
STUDIES ?= $(SAMPLE)/datastore
HOST ?= 127.0.0.1
PORT ?= 8000
CONF ?=

.PHONY: serve serve-dicomweb viewer-packages test install sample-data weights weights-lits overlay-real benchmark benchmark-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch's CUDA build alone is 5.5 GB: say so before pip fails half-way with "No space left on device"
NEED_GB ?= 10
$(INSTALLED): requirements.txt | $(PY)
	@have=$$(df -Pk $(VENV) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  got=$$(du -sk $(VENV) | awk '{print int($$1 / 1048576)}'); \
	  if [ $$((have + got)) -lt $(NEED_GB) ]; then \
	    echo "make: installing needs about $(NEED_GB) GB for $(VENV)/; $$have GB free on its disk. Free some space, or set NEED_GB=0 to try anyway." >&2; \
	    exit 1; fi
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

install: $(INSTALLED)

$(SAMPLE)/.done: $(INSTALLED) $(wildcard sample-data/*.py)
	$(PY) sample-data/make_sample_data.py --out $(SAMPLE)

sample-data: $(SAMPLE)/.done

serve: install sample-data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MONAI_LABEL_TRACKING_ENABLED=false \
	  $(VENV)/bin/monailabel start_server --app apps/liver_cascade --studies $(STUDIES) \
	  --host $(HOST) --port $(PORT) $(CONF)

# OHIF at http://$(HOST):$(PORT)/ohif/; Orthanc (storage data-local/orthanc) on 127.0.0.1:$(ORTHANC_PORT). README: "Use it from OHIF".
ORTHANC_PORT ?= 8042
serve-dicomweb: install sample-data viewer-packages
	$(PY) viewers/orthanc/serve_dicomweb.py --orthanc-port $(ORTHANC_PORT) --host $(HOST) --port $(PORT) -- $(CONF)

# Debian packages for Orthanc + DICOMweb and the OHIF browser test (root; .ci/run does this too).
VIEWER_DEBS := orthanc orthanc-dicomweb chromium
viewer-packages:
	@if ! command -v Orthanc >/dev/null || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(VIEWER_DEBS); \
	  else echo "not root: install $(VIEWER_DEBS) with apt-get, or tests/viewers will skip"; fi; fi

# viewer-packages first (as root); if apt-get fails, tests/viewers skip and say which package is missing
test: install sample-data
	-@$(MAKE) --no-print-directory viewer-packages
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest tests -q -rs

clean:
	rm -rf $(SAMPLE)

# Rebuild the demo weights (needs ../shared/real-ct; about 80 min on 2 CPU cores: 37 + 43). See docs/RESULTS.md.
weights: install
	$(PY) sample-data/make_sample_data.py --out data-local/phantom-train --train-set 16 --seed 100
	$(PY) scripts/train_demo_weights.py --holdout hcc_0697 --other-phase --models liver_resnet --epochs1 30 --dice-batch
	$(PY) scripts/train_demo_weights.py --holdout hcc_0697 --other-phase --models liver_cascade --epochs2 20 \
	  --dice-batch --liver-box --lesion-weight 5 --lesion-ratio 2

# The LiTS training set (MSD Task03, 131 labelled CTs; downloads many GB: needs internet, and a GPU
# for PRESET=paper) plus the phantoms; validated on 5 LiTS cases, tested on both real patients of
# ../shared/real-ct, which it never sees. Writes model/*_$(PRESET).pt and docs/results/demo_unseen_both_lits*.json.
PRESET ?= lite
WORKERS ?= 8
weights-lits: install
	$(PY) sample-data/make_sample_data.py --out data-local/phantom-train --train-set 16 --seed 100
	$(PY) sample-data/fetch_msd.py --root data-local/msd --out data-local/msd-datastore
	$(PY) scripts/train_demo_weights.py --lits data-local/msd-datastore --holdout all --preset $(PRESET) \
	  --num-workers $(WORKERS) --models liver_resnet --epochs1 40 --dice-batch
	$(PY) scripts/train_demo_weights.py --lits data-local/msd-datastore --holdout all --preset $(PRESET) \
	  --num-workers $(WORKERS) --models liver_cascade --epochs2 20 \
	  --dice-batch --liver-box --lesion-weight 5 --lesion-ratio 2

# The held-out real patient (split 1) segmented by the shipped weights, reference outlined, as a PNG
# in data-local/ (git-ignored): ../shared/real-ct may not be copied into the repository, not even as a picture.
REAL_CT ?= ../shared/real-ct/nifti
overlay-real: install
	$(PY) scripts/overlay.py --image $(REAL_CT)/hcc_0697_eqp.nii.gz --ref $(REAL_CT)/hcc_0697_eqp_label.nii.gz \
	  --model-dir apps/liver_cascade/model --out data-local/overlay_unseen_split1.png --title "unseen patient, split 1:"

benchmark: install
	$(PY) benchmarks/cpu_benchmark.py --segresnet

# Not $(PY) on purpose: run on a lent GPU machine with its own CUDA PyTorch (docs/BENCHMARKS.md), where
# the venv may not exist and cannot be installed (no internet); the script installs nothing.
benchmark-gpu:
	$(PYTHON) benchmarks/gpu_benchmark.py
