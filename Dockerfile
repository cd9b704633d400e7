# mlfs container image.
#   podman build -t mlfs .          (or docker build; `make image` builds it offline-friendly)
#   docker run --device /dev/fuse --cap-add SYS_ADMIN mlfs mount MANIFEST /mnt/model -- CMD ...
# The base is a build argument so a locally made Debian base works where no registry does.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---- build: compilers and libfuse3 headers, only to build pyfuse3 into a venv
FROM ${BASE_IMAGE} AS build
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv python3-dev gcc pkg-config libfuse3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Behind a TLS-intercepting proxy, pass its CA bundle as the build secret "ca"
# (`make image` passes the host's); without one, pip uses its own.
RUN python3 -m venv /opt/mlfs
# Dependencies first, in their own layer: code changes then rebuild only the last one.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/mlfs/bin/pip install -q --no-cache-dir -r /tmp/requirements.txt
COPY README.md /src/
COPY mlfs /src/mlfs
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/mlfs/bin/pip install -q --no-cache-dir --no-deps /src \
 && /opt/mlfs/bin/pip check

# ---- final: the fuse3 runtime and the installed package; no compilers
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 fuse3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/mlfs /opt/mlfs
# `mount -t fuse.mlfs` looks for its helper in /sbin.
RUN ln -s /opt/mlfs/bin/mlfs /usr/local/bin/mlfs \
 && ln -s /opt/mlfs/bin/mount.fuse.mlfs /sbin/mount.fuse.mlfs
ENV MLFS_CACHE=/var/cache/mlfs
ENTRYPOINT ["mlfs"]
CMD ["--help"]
