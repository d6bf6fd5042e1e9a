#!/usr/bin/env bash
# Build the CPU image (`make image`): `docker build` where a Docker engine answers, podman otherwise.
#
# With podman (Debian's 4.3, as root), which is what machines without Docker use:
#   - CONTAINERS_CONF points at infra/podman/containers.conf (runc, no default ulimits);
#   - the base is BASE_IMAGE if present or pullable, else a Debian bookworm + Python 3.11 base made
#     once with debootstrap and imported as FALLBACK_BASE (cached: made again only when missing);
#   - RUN steps reach the package registries through this machine's own package configuration,
#     mounted read-only for the build only (pip's config files and the local folders they name,
#     apt's sources and apt.conf.d); nothing of it is written into the image or this repo.
# Environment: IMAGE (berth:cpu), BASE_IMAGE, FALLBACK_BASE, CONTAINER_ENGINE (docker|podman),
# TORCH_INDEX_URL (podman default: empty = pip's configuration), BUILD_ARGS (extra words).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-berth:cpu}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
FALLBACK_BASE=${FALLBACK_BASE:-localhost/berth-base:bookworm}
BUILD_PIP_CERT=/run/berth-build/pip-cert.pem
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/infra/podman/containers.conf}

log() { echo "build-image: $*" >&2; }

# A real Docker engine (podman-docker's `docker` shim does not count: it is podman without our setup).
docker_engine() {
    command -v docker >/dev/null 2>&1 || return 1
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || return 1
    ! docker --version 2>/dev/null | grep -qi podman
}

# Debian's packages for podman builds, when missing (needs root and apt, as CI has).
ensure_podman_tools() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Debian bookworm + Python 3.11 (what python:3.11-slim-bookworm gives), made with debootstrap.
BASE_ROOT=""
trap '[[ -z $BASE_ROOT ]] || rm -rf "$BASE_ROOT"' EXIT
make_fallback_base() {
    BASE_ROOT=$(mktemp -d /var/tmp/berth-base.XXXXXX)
    log "making $FALLBACK_BASE with debootstrap (a few minutes)"
    # shellcheck disable=SC2086
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,curl \
        bookworm "$BASE_ROOT" ${DEBOOTSTRAP_MIRROR:-} >/dev/null
    rm -rf "$BASE_ROOT"/var/cache/apt/archives/*.deb "$BASE_ROOT"/var/lib/apt/lists/*
    tar -C "$BASE_ROOT" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$FALLBACK_BASE" >/dev/null
    rm -rf "$BASE_ROOT"
}

podman_base() {
    if podman image exists "$BASE_IMAGE"; then echo "$BASE_IMAGE"; return; fi
    if podman image exists "$FALLBACK_BASE"; then echo "$FALLBACK_BASE"; return; fi
    if timeout 300 podman pull -q "$BASE_IMAGE" >/dev/null 2>&1; then echo "$BASE_IMAGE"; return; fi
    log "$BASE_IMAGE cannot be pulled"
    make_fallback_base
    echo "$FALLBACK_BASE"
}

# `-v PATH:PATH:ro` for this machine's package configuration: pip's config files and the local paths
# they name (find-links, constraints, file:// indexes, the CA bundle), and apt's sources and apt.conf.d.
package_config_mounts() {
    local paths=() line value word cert=${PIP_CERT:-}
    while IFS= read -r line; do
        if [[ $line =~ ^\ +(/[^,]+),\ exists:\ True$ ]]; then
            paths+=("${BASH_REMATCH[1]}")
        elif [[ $line =~ ^\ +[a-z]+\.cert:\ (/.*)$ ]]; then
            cert=${cert:-${BASH_REMATCH[1]}}
        elif [[ $line =~ ^\ +[a-z]+\.(find-links|constraint|requirement|index-url|extra-index-url):\ (.*)$ ]]; then
            value=${BASH_REMATCH[2]}
            for word in $value; do
                word=${word#file://}
                word=${word%/}
                # A file:// index's pages link to files beside it (ROOT/simple -> ../../files): mount ROOT.
                [[ $word == */simple ]] && word=${word%/simple}
                [[ $word == /* && -e $word ]] && paths+=("$word")
            done
        fi
    done < <(python3 -m pip config debug 2>/dev/null || true)
    for value in /etc/apt/sources.list /etc/apt/sources.list.d /etc/apt/apt.conf.d; do
        [[ -e $value ]] && paths+=("$value")
    done
    printf '%s\n' "${paths[@]}" | sort -u | while IFS= read -r value; do
        [[ -n $value ]] && printf -- '-v\n%s:%s:ro\n' "$value" "$value"
    done
    # pip's CA bundle (this machine's TLS proxy needs it) goes beside, not over, the image's own
    # /etc/ssl (ca-certificates updates it during the build); the Dockerfile's PIP_CERT arg names it.
    if [[ -f $cert ]]; then
        printf -- '-v\n%s:%s:ro\n--build-arg\nPIP_CERT=%s\n' "$cert" "$BUILD_PIP_CERT" "$BUILD_PIP_CERT"
    fi
}

start=$(date +%s)
if [[ ${CONTAINER_ENGINE:-} == docker ]] || { [[ -z ${CONTAINER_ENGINE:-} ]] && docker_engine; }; then
    log "docker build -t $IMAGE"
    # shellcheck disable=SC2086
    docker build -t "$IMAGE" --build-arg VARIANT=cpu --build-arg BASE_IMAGE="$BASE_IMAGE" \
        ${TORCH_INDEX_URL+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} ${BUILD_ARGS:-} .
else
    ensure_podman_tools
    base=$(podman_base)
    mapfile -t mounts < <(package_config_mounts)
    log "podman build -t $IMAGE from $base"
    # shellcheck disable=SC2086
    podman build --network host --format docker -t "$IMAGE" \
        --build-arg VARIANT=cpu --build-arg BASE_IMAGE="$base" \
        --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL-}" "${mounts[@]}" ${BUILD_ARGS:-} .
fi
log "$IMAGE built in $(($(date +%s) - start)) s"
