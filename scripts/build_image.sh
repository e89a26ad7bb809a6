#!/usr/bin/env bash
# Build the sessiond container image without any image registry.
#
#   bash scripts/build_image.sh            # -> localhost/sessiond:<version> and :latest
#
# No base image is pulled: the root filesystem is a minimal Debian (bookworm)
# made by debootstrap from Debian's own package mirror, cached under
# ~/.cache/sessiond-image so later builds skip it. buildah turns it into an
# image: the wheel built from this checkout is installed into a virtualenv at
# /opt/sessiond (with the `postgres` extra, which includes `server`, from PyPI), a
# non-root user `sessiond` (uid 10001) owns the volume /var/lib/sessiond where
# the database lives, and the command is `sessiond serve` on 0.0.0.0:50051,
# which refuses to start without API keys and TLS unless `--insecure` is given.
# grpc_health_probe (built from the Go module proxy, pinned) is in the image for
# Kubernetes exec probes: the kubelet's own `grpc:` probe cannot speak TLS.
#
# Needs root (debootstrap, buildah's storage) and Go; installs debootstrap,
# buildah, podman and runc with apt-get when they are missing. Environment:
#   SESSIOND_IMAGE         image name (default localhost/sessiond)
#   SESSIOND_IMAGE_CACHE   cache directory (default ~/.cache/sessiond-image)
#   DEBIAN_MIRROR          Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SESSIOND_IMAGE:-localhost/sessiond}
CACHE=${SESSIOND_IMAGE_CACHE:-$HOME/.cache/sessiond-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# What the base holds; a change here makes a new cached root filesystem.
PACKAGES=python3,python3-venv,ca-certificates,passwd
PROBE_MODULE=github.com/grpc-ecosystem/grpc-health-probe
PROBE_VERSION=v0.4.63
BASE="$CACHE/rootfs-$SUITE-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12).tar"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

say() { printf 'build_image: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "needs root (debootstrap and buildah's storage); run it with sudo"
  exit 1
fi

missing=()
for tool in debootstrap buildah podman runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 1. The Debian root filesystem, made once and kept as a tarball.
mkdir -p "$CACHE"
if [ ! -s "$BASE" ]; then
  say "debootstrap $SUITE ($PACKAGES) from $MIRROR (cached in $BASE)"
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2
  # What a server image never needs: package lists, caches, documentation.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" --numeric-owner -cf "$BASE.partial" .
  mv "$BASE.partial" "$BASE"
  rm -rf "$rootfs"
  trap - EXIT
fi

# 2. grpc_health_probe, a static binary, built once per pinned version.
probe="$CACHE/grpc-health-probe-$PROBE_VERSION/grpc-health-probe"
if [ ! -x "$probe" ]; then
  command -v go >/dev/null 2>&1 || { say "needs Go to build grpc_health_probe"; exit 1; }
  say "building $PROBE_MODULE@$PROBE_VERSION"
  CGO_ENABLED=0 GOBIN="$(dirname "$probe")" go install "$PROBE_MODULE@$PROBE_VERSION" >&2
fi

# 3. The wheel of this checkout (it records the git revision it was built from).
dist=$(mktemp -d)
container=""
cleanup() {
  [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1
  rm -rf "$dist"
}
trap cleanup EXIT
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$dist" . >&2
wheel=$(ls "$dist"/sessiond-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
revision=$("$PYTHON" -c 'import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
name = "sessiond/BUILD_REVISION"
print(wheel.read(name).decode().strip() if name in wheel.namelist() else "unknown")' "$wheel")
say "wheel $(basename "$wheel") (revision $revision)"

# 4. The image: the root filesystem, then the wheel installed inside it (chroot,
#    so pip picks wheels for the image's own Python), then the user and config.
container=$(buildah from scratch)
mnt=$(buildah mount "$container")
tar -C "$mnt" --numeric-owner -xf "$BASE"
cp "$wheel" "$mnt/tmp/"
install -m 0755 "$probe" "$mnt/usr/local/bin/grpc_health_probe"
cp /etc/resolv.conf "$mnt/etc/resolv.conf"
pip_env=(PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1)
ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}
if [ -n "$ca" ] && [ -f "$ca" ]; then  # a local CA bundle the host's pip trusts
  cp "$ca" "$mnt/tmp/host-ca.pem"
  pip_env+=(PIP_CERT=/tmp/host-ca.pem)
fi
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST HTTPS_PROXY HTTP_PROXY NO_PROXY; do
  [ -n "${!name:-}" ] && pip_env+=("$name=${!name}")
done
chroot "$mnt" /usr/bin/python3 -m venv /opt/sessiond
chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${pip_env[@]}" \
  /opt/sessiond/bin/pip install --quiet "/tmp/$(basename "$wheel")[postgres]" >&2
chroot "$mnt" /usr/sbin/useradd --uid 10001 --user-group \
  --home-dir /var/lib/sessiond --no-create-home --shell /usr/sbin/nologin sessiond
install -d -o 10001 -g 10001 -m 0750 "$mnt/var/lib/sessiond"
install -d -m 0755 "$mnt/etc/sessiond"
rm -f "$mnt/tmp/"*.whl "$mnt/tmp/host-ca.pem"
: > "$mnt/etc/resolv.conf"  # the runtime provides its own
find "$mnt/opt/sessiond" -name __pycache__ -prune -exec rm -rf {} +
buildah umount "$container" >/dev/null

buildah config \
  --user sessiond:sessiond \
  --workingdir /var/lib/sessiond \
  --volume /var/lib/sessiond \
  --port 50051 --port 9464 \
  --env PATH=/opt/sessiond/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SESSIOND_DATABASE=/var/lib/sessiond/sessiond.db \
  --env SESSIOND_ADDRESS=0.0.0.0:50051 \
  --env SESSIOND_METRICS_ADDRESS=0.0.0.0:9464 \
  --entrypoint '["/opt/sessiond/bin/sessiond"]' \
  --cmd '["serve"]' \
  --stop-signal SIGTERM \
  --label org.opencontainers.image.title=sessiond \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$revision" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$container"
previous=$(buildah images --quiet --no-trunc "$IMAGE:$version" 2>/dev/null || true)
buildah commit --quiet --rm "$container" "$IMAGE:$version" >/dev/null
container=""
buildah tag "$IMAGE:$version" "$IMAGE:latest"
if [ -n "$previous" ]; then  # the image this build replaced, now without a name
  buildah rmi "$previous" >/dev/null 2>&1 || true  # kept while a container still uses it
fi
say "built $IMAGE:$version and $IMAGE:latest"
echo "$IMAGE:$version"
