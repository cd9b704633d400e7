# mlfs: two commands on a fresh Debian machine.
#   make demo   installs everything, serves a demo model, mounts it, loads it, unmounts
#   make test   installs everything and runs the whole test suite
#   make image  builds the container image (podman + runc, no registry needed)
#   make test-image  builds it and runs it against a local SeaweedFS
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# fuse3 + libfuse3-dev + pkg-config build and run pyfuse3; rclone and s3cmd are
# real S3 clients the gateway tests drive.
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rclone s3cmd

.PHONY: demo test test-long bench lint system-deps venv clean image test-image base-image image-deps

system-deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Bytecode for the package itself: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set every `mlfs` command would compile its modules again
# (a fifth of a mount's start-up). compileall skips what is up to date.
venv: system-deps $(VENV)/.installed
	@$(PY) -m compileall -q mlfs

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) scripts/demo.py

test: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q

# The fuzz targets with at least 10,000 examples each (make test runs a few hundred).
test-long: venv
	HYPOTHESIS_PROFILE=long PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q tests/fuzz

bench: venv
	@# Peers of the peer benchmark: s3fs from Debian, the Run:ai streamer and a CPU-only torch.
	@dpkg -s s3fs >/dev/null 2>&1 || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q s3fs; }
	$(PY) -m pip install -q -e '.[bench]' || echo "bench extra did not install: the Run:ai row is skipped"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/run_all.py

lint: venv
	$(VENV)/bin/ruff check mlfs tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache

# ---------------------------------------------------------------- container image
# Built with podman and runc from Debian; no registry is needed: the base image is
# made with debootstrap from the Debian mirror apt already uses and imported once.
# Elsewhere, `podman build` or `docker build` with the default BASE_IMAGE works as is.
IMAGE ?= localhost/mlfs:latest
BASE_IMAGE ?= localhost/debian-base:bookworm
IMAGE_APT_PACKAGES := podman runc debootstrap
DEBIAN_MIRROR ?= $(shell sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
PODMAN := podman --runtime runc
comma := ,
# The host's CA bundle reaches pip inside the build (TLS-intercepting proxies).
IMAGE_CA := $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--secret id=ca$(comma)src=/etc/ssl/certs/ca-certificates.crt)

image-deps:
	@if ! dpkg -s $(IMAGE_APT_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(IMAGE_APT_PACKAGES); \
	fi

base-image: image-deps
	@if [ "$(BASE_IMAGE)" = localhost/debian-base:bookworm ] && ! $(PODMAN) image exists $(BASE_IMAGE); then \
		set -e; root=$$(mktemp -d); \
		$(SUDO) debootstrap --variant=minbase bookworm $$root/rootfs $(or $(DEBIAN_MIRROR),http://deb.debian.org/debian); \
		$(SUDO) tar -C $$root/rootfs -c . | $(PODMAN) import - $(BASE_IMAGE); \
		$(SUDO) rm -rf $$root; \
	fi

image: base-image
	$(PODMAN) build --build-arg BASE_IMAGE=$(BASE_IMAGE) $(IMAGE_CA) -t $(IMAGE) .
	@$(PODMAN) image inspect --format 'image $(IMAGE): {{.Size}} bytes' $(IMAGE)

test-image: venv image
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFS_IMAGE=$(IMAGE) $(PY) -m pytest -q -s -o addopts=-ra tests/image
