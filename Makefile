# Two entry points for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both install what they need: Debian packages (mosquitto, DCMTK, dicom3tools, Orthanc and its GDCM plugin) when missing, and a
# virtual environment in .venv with edged and its test dependencies.

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
APT_PKGS := mosquitto mosquitto-clients dcmtk dicom3tools orthanc orthanc-gdcm systemd python3-venv openssl
# Cameras: GStreamer for the capture helper on the system Python (python3-gi), H.264 encode/decode
# and an RTSP server library the tests use as an IP camera.
GST_PKGS := python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
	gstreamer1.0-libav gstreamer1.0-rtsp
GST_PROBE := import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0"); \
	from gi.repository import Gst; Gst.init(None); \
	assert all(Gst.ElementFactory.find(e) for e in ("x264enc", "avdec_h264", "rtspsrc", "imagefreeze", "videorate"))
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-camera test setup system-deps models bench bench-cameras bench-sgie soak-cameras clean flash-test flash-test-jp5 flash-deps flash-cross-deps fuzz

demo: setup models
	$(BIN)/edged demo

demo-camera: setup models
	$(BIN)/edged demo --camera

# Two pytest-xdist workers: the suite waits on daemons, brokers and PACS processes about half the
# time, so two workers on two cores take ~7 minutes where one took ~12 (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2
test: setup models
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) $(PYTEST_ARGS)

bench: setup models
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python tools/bench.py

# Cameras: N = 1, 2, 4, 8 RTSP cameras at 2 and 5 fps with both detectors (~15 min), then the
# 10-minute RSS soak on its own target (docs/performance.md).
bench-cameras: setup models
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python tools/bench_cameras.py

bench-sgie: setup models
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python tools/bench_sgie.py

soak-cameras: setup models
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python tools/bench_cameras.py --soak 600

# >= 10,000 seeded hostile cases against the daemon as a real process (about 25 min on 2 cores);
# FUZZ_ARGS e.g. "--cases 20000 --seed 3". Summary: fuzz-out/fuzz-summary.{md,json}; exit 1 on a finding.
fuzz: setup models
	$(BIN)/python -m tools.fuzz $(FUZZ_ARGS)

setup: system-deps $(VENV)/.installed

# Only what is missing is installed; a machine that has everything is left alone.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	[ -x /usr/bin/storescu ] || missing="$$missing dcmtk"; \
	[ -x /usr/bin/dciodvfy ] || missing="$$missing dicom3tools"; \
	[ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancGdcm.so ] || missing="$$missing orthanc-gdcm"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	$(PY) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	/usr/bin/python3 -c '$(GST_PROBE)' >/dev/null 2>&1 || missing="$$missing $(GST_PKGS)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PY) -c 'import sys; assert sys.version_info >= (3, 10), "edged needs Python >= 3.10"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

models: $(VENV)/.installed
	$(BIN)/python tools/make_models.py

# A flashed image booted under emulation (README: "Image under emulation"). Builds an arm64
# root from scratch every run; nothing is cached between runs.
FLASH_PKGS := qemu-user-static binfmt-support mmdebstrap systemd-container arch-test
CROSS_PKGS := gcc-aarch64-linux-gnu make xz-utils

flash-test: setup models flash-deps
	EDGED_FLASH=bookworm $(BIN)/python -m pytest tests/flash -q -s -p no:cacheprovider $(PYTEST_ARGS)

flash-test-jp5: setup models flash-deps flash-cross-deps
	EDGED_FLASH=bullseye $(BIN)/python -m pytest tests/flash -q -s -p no:cacheprovider $(PYTEST_ARGS)

flash-deps:
	@missing=""; for p in $(FLASH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@[ -e /proc/sys/fs/binfmt_misc/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@$(SUDO) update-binfmts --enable qemu-aarch64 2>/dev/null || true
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 binfmt handler not registered"; exit 1; }

flash-cross-deps:
	@missing=""; for p in $(CROSS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info engines/*/model.onnx
