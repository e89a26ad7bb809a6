#!/usr/bin/env bash
# `podman run` with the options that let the image run on CI machines and sandboxes:
#
#   bash scripts/run_image.sh [podman run options] IMAGE [sessiond arguments]
#
# * --runtime runc: crun (podman's default on Debian) refuses hosts whose cgroups
#   are neither v1 nor v2 ("crun: cgroups in hybrid mode not supported, drop all
#   controllers from cgroupv2"); runc runs there and everywhere else.
# * --ulimit: podman's default open-file limit (1048576) is above the hard limit of
#   many hosts, and raising a limit needs a privilege containers here lack
#   ("crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted"); so ask for what
#   the host allows.
# On a host without these limits a plain `podman run` works as well.
set -euo pipefail
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
exec podman run --runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 "$@"
