#!/usr/bin/env bash
# Make sure the base image the Containerfile names exists locally, and print its name.
#
# The default base is Debian's own bookworm-slim from its registry. Where no registry can be reached (a build
# machine that only reaches Debian's package mirrors), the same system is built from Debian's packages with
# mmdebstrap instead, and imported as a local image: that fallback is said on stderr.
#
#   deploy/container/base-image.sh [IMAGE]      # IMAGE defaults to docker.io/library/debian:bookworm-slim
set -euo pipefail
want=${1:-docker.io/library/debian:bookworm-slim}
fallback=localhost/debian:bookworm-slim-mmdebstrap
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$want" >/dev/null 2>&1; then
    echo "$want"
    exit 0
fi
if timeout 60 buildah pull --quiet "$want" >/dev/null 2>&1; then
    echo "$want"
    exit 0
fi
echo "base image: cannot pull $want (no registry reachable); using $fallback, built from Debian's packages" >&2
if buildah inspect --type image "$fallback" >/dev/null 2>&1; then
    echo "$fallback"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "base image: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# minbase is Debian's bookworm-slim: essential packages and apt. Documentation, manuals and translations are
# left out as the slim image leaves them out; merged /usr as Debian has it since bookworm.
mmdebstrap --quiet --variant=minbase --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    bookworm "$work/rootfs.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >&2
container=$(buildah from scratch)
buildah add --quiet "$container" "$work/rootfs.tar" / >&2
buildah config --cmd '["/bin/bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="Debian bookworm minbase, built by mmdebstrap" "$container" >&2
buildah commit --quiet --rm "$container" "$fallback" >/dev/null
echo "$fallback"
