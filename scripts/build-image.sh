#!/usr/bin/env bash
# Build the stemworker container image with Docker, Podman or Buildah; see README.md, "Container image".
#
#   scripts/build-image.sh                          # Docker/Podman: pulls python:3.11-slim-bookworm, downloads htdemucs
#   scripts/build-image.sh --debootstrap --generate-models --models tiny    # no registry, no model download
#
# Every option also has an environment variable (in brackets). Build outputs (the debootstrap rootfs, generated
# models, the pip config handed to the build as secrets) go to --build-dir, never into the repository.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
builder=${STEMWORKER_BUILDER:-auto}
tag=${IMAGE_TAG:-stemworker:latest}
base=${BASE_IMAGE:-}
debootstrap=${DEBOOTSTRAP_BASE:-0}
debian_suite=${DEBIAN_SUITE:-bookworm}
debian_mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
models=${MODELS:-htdemucs}
default_model=${DEMUCS_MODEL:-}
model_source=${MODEL_SOURCE:-}
generate_models=${GENERATE_MODELS:-0}
torch_spec=${TORCH_SPEC:-}
torch_index=${TORCH_INDEX-__auto__}
build_dir=${BUILD_DIR:-${TMPDIR:-/tmp}/stemworker-image}
from_git=${FROM_GIT:-}
host_pip=${HOST_PIP_CONFIG:-1}
host_python=${PYTHON:-}

usage() {
    cat <<'EOF'
usage: scripts/build-image.sh [options]
  --builder docker|podman|buildah  [STEMWORKER_BUILDER] default: docker if its daemon answers, else podman, else buildah
  --tag NAME                       [IMAGE_TAG]          default: stemworker:latest
  --base IMAGE                     [BASE_IMAGE]         default: the Dockerfile's python:3.11-slim-bookworm
  --debootstrap                    [DEBOOTSTRAP_BASE=1] build the base from Debian packages instead of pulling it
  --models a,b                     [MODELS]             models to bake, default: htdemucs
  --default-model NAME             [DEMUCS_MODEL]       default: the first of --models
  --model-source DIR               [MODEL_SOURCE]       bake this local DEMUCS model repo instead of downloading
  --generate-models                [GENERATE_MODELS=1]  write random-weight models (python -m workbench.model_repo)
                                                        into the build dir and bake those (offline builds)
  --torch-spec SPEC                [TORCH_SPEC]         default: the Dockerfile's torch==2.13.0
  --torch-index URL                [TORCH_INDEX]        default: the Dockerfile's CPU index; '' = pip's own index.
                                                        Left unset, '' is used when the host's find-links folder
                                                        already holds the pinned torch wheel
  --build-dir DIR                  [BUILD_DIR]          default: $TMPDIR/stemworker-image
  --from-git REV                   [FROM_GIT]           build the committed tree at REV instead of the work tree
  --no-host-pip                    [HOST_PIP_CONFIG=0]  do not hand the host's pip configuration to the build
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --builder) builder=$2; shift ;;
        --tag) tag=$2; shift ;;
        --base) base=$2; shift ;;
        --debootstrap) debootstrap=1 ;;
        --models) models=$2; shift ;;
        --default-model) default_model=$2; shift ;;
        --model-source) model_source=$2; shift ;;
        --generate-models) generate_models=1 ;;
        --torch-spec) torch_spec=$2; shift ;;
        --torch-index) torch_index=$2; shift ;;
        --build-dir) build_dir=$2; shift ;;
        --from-git) from_git=$2; shift ;;
        --no-host-pip) host_pip=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { echo "build-image: $*" >&2; }
image_exists() {
    if [ "$builder" = buildah ]; then buildah inspect --type image "$1" >/dev/null 2>&1
    else "$builder" image inspect "$1" >/dev/null 2>&1; fi
}
die() { log "$*"; exit 1; }

case $builder in
    auto)
        if command -v docker >/dev/null && docker info >/dev/null 2>&1; then builder=docker
        elif command -v podman >/dev/null; then builder=podman
        elif command -v buildah >/dev/null; then builder=buildah
        else die "no Docker daemon, podman or buildah found"; fi ;;
    docker|podman|buildah) command -v "$builder" >/dev/null || die "$builder is not installed" ;;
    *) die "--builder must be docker, podman or buildah, got '$builder'" ;;
esac
default_model=${default_model:-${models%%,*}}
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
case $build_dir/ in "$repo"/*) die "--build-dir must be outside the repository ($build_dir)" ;; esac
log "builder: $builder, tag: $tag, build dir: $build_dir"

# ---- build context: the work tree, or a clean export of a commit
context=$repo
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$from_git" ]; then
    context=$build_dir/context
    rm -rf "$context" && mkdir -p "$context"
    git -C "$repo" archive "$from_git" | tar -x -C "$context"
    revision=$(git -C "$repo" rev-parse "$from_git")
elif [ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]; then
    revision=$revision-dirty
fi
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$context/pyproject.toml" | head -n 1)
source_url=${SOURCE_URL:-$(git -C "$repo" remote get-url origin 2>/dev/null || true)}

# ---- base image from Debian packages (no registry needed)
if [ "$debootstrap" = 1 ]; then
    base=${base:-localhost/stemworker-base:$debian_suite}
    if ! image_exists "$base"; then
        command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
        rootfs=$build_dir/rootfs-$debian_suite
        rm -rf "$rootfs"
        log "debootstrap $debian_suite from $debian_mirror into $rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$debian_suite" "$rootfs" "$debian_mirror" >"$build_dir/debootstrap.log" 2>&1 \
            || { tail -n 20 "$build_dir/debootstrap.log" >&2; die "debootstrap failed"; }
        # Package caches and documentation are not part of a runtime base.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        tar --numeric-owner -C "$rootfs" -cf "$build_dir/rootfs-$debian_suite.tar" .
        base_env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        case $builder in
            buildah)
                ctr=$(buildah from scratch)
                buildah add "$ctr" "$build_dir/rootfs-$debian_suite.tar" / >/dev/null
                buildah config --env "$base_env" --env LANG=C.UTF-8 --cmd /bin/bash \
                    --label org.opencontainers.image.description="Debian $debian_suite minbase + python3 (debootstrap)" \
                    "$ctr"
                buildah commit --rm "$ctr" "$base" >/dev/null ;;
            *)
                "$builder" import --change "ENV $base_env" --change "ENV LANG=C.UTF-8" --change 'CMD ["/bin/bash"]' \
                    "$build_dir/rootfs-$debian_suite.tar" "$base" >/dev/null ;;
        esac
        rm -rf "$rootfs" "$build_dir/rootfs-$debian_suite.tar"
        log "base image $base imported"
    else
        log "reusing base image $base"
    fi
fi

# ---- models: a local repo to bake, generated here when asked
if [ "$generate_models" = 1 ]; then
    [ -z "$model_source" ] || die "--generate-models and --model-source exclude each other"
    if [ -z "$host_python" ]; then
        if [ -x "$repo/.venv/bin/python" ]; then host_python=$repo/.venv/bin/python; else host_python=python3; fi
    fi
    model_source=$build_dir/models
    rm -rf "$model_source"
    model_args=()
    IFS=, read -r -a names <<<"$models"
    for name in "${names[@]}"; do model_args+=(--model "$name"); done
    log "generating random-weight models ${models} into $model_source"
    (cd "$context" && "$host_python" -m workbench.model_repo "$model_source" "${model_args[@]}" >/dev/null)
fi

args=(--tag "$tag" --file "$context/Dockerfile"
      --build-arg "MODELS=$models" --build-arg "DEMUCS_MODEL=$default_model"
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE_URL=$source_url")
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
[ -z "$torch_spec" ] || args+=(--build-arg "TORCH_SPEC=$torch_spec")
if [ -n "$model_source" ]; then
    [ -d "$model_source" ] || die "--model-source $model_source is not a folder"
    args+=(--build-context "model-source=$(cd "$model_source" && pwd)")
fi

# ---- the host's pip configuration, handed over as build secrets (never a build arg, never a layer)
pip_find_links=
if [ "$host_pip" = 1 ]; then
    pip_python=${host_python:-python3}
    command -v "$pip_python" >/dev/null || pip_python=python3
    if command -v "$pip_python" >/dev/null && "$pip_python" -m pip --version >/dev/null 2>&1; then
        pip_dir=$build_dir/pip
        rm -rf "$pip_dir" && mkdir -p "$pip_dir" && chmod 700 "$pip_dir"
        # One line per secret or context: "secret <id> <file>" or "find-links <dir>".
        while read -r kind name value; do
            case $kind in
                secret) args+=(--secret "id=$name,src=$value") ;;
                find-links) pip_find_links=$name ;;
                note) log "pip: $name $value" ;;
            esac
        done < <("$pip_python" - "$pip_dir" <<'PY'
import configparser, os, shutil, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}
for line in listing.splitlines():  # "global.cert='...'" and ":env:.cert='...'"; env lines win
    key, _, value = line.partition("=")
    scope, _, name = key.rpartition(".")
    if name and (scope == ":env:" or name not in settings):
        settings[name] = value.strip().strip("'\"")
conf = configparser.ConfigParser()
conf["global"] = {}
g = conf["global"]
for name in ("index-url", "timeout", "default-timeout", "retries", "trusted-host"):
    if settings.get(name):
        g[name] = settings[name]
if settings.get("cert") and Path(settings["cert"]).is_file():
    shutil.copyfile(settings["cert"], out / "ca.crt")
    g["cert"] = "/run/secrets/pip-ca.crt"
    print("secret pip-ca.crt", out / "ca.crt")
if settings.get("constraint") and Path(settings["constraint"]).is_file():
    shutil.copyfile(settings["constraint"], out / "constraints.txt")
    g["constraint"] = "/run/secrets/pip-constraints.txt"
    print("secret pip-constraints.txt", out / "constraints.txt")
links = settings.get("find-links", "").split()
local = [link for link in links if Path(link).is_dir()]
if local:
    g["find-links"] = "/run/pip-find-links"
    print("find-links", local[0])
for dropped in local[1:] + [link for link in links if link not in local]:
    print("note dropped find-links", dropped)
for index in settings.get("extra-index-url", "").split():
    if index.startswith("file:"):
        print("note dropped local extra-index-url", index)
    else:
        g["extra-index-url"] = (g.get("extra-index-url", "") + " " + index).strip()
with (out / "pip.conf").open("w") as handle:
    conf.write(handle)
print("secret pip.conf", out / "pip.conf")
PY
        )
        [ -z "$pip_find_links" ] || args+=(--build-context "pip-find-links=$pip_find_links")
    else
        log "no pip on the host: the build uses pip's defaults"
    fi
fi

# An empty TORCH_INDEX lets pip pick torch from its own index and find-links, exactly as CI does; that is the
# default only when the host's find-links already hold the pinned wheel (e.g. an offline CPU wheel).
if [ "$torch_index" = __auto__ ]; then
    pin=${torch_spec:-$(sed -n 's/^ARG TORCH_SPEC=//p' "$context/Dockerfile")}
    if [ -n "$pip_find_links" ] && compgen -G "$pip_find_links/torch-${pin#torch==}[+-]*.whl" >/dev/null; then
        torch_index=
        log "torch: ${pin} from $pip_find_links (the host's find-links)"
    fi
fi
[ "$torch_index" = __auto__ ] || args+=(--build-arg "TORCH_INDEX=$torch_index")

case $builder in
    buildah) cmd=(buildah build --isolation "${BUILDAH_ISOLATION:-chroot}" --layers) ;;
    podman) cmd=(podman build --layers) ;;
    docker) cmd=(docker build) ;;
esac
log "${cmd[*]} ${args[*]} $context"
start=$(date +%s)
"${cmd[@]}" "${args[@]}" "$context"
seconds=$(( $(date +%s) - start ))
log "built $tag in ${seconds} s"
"$builder" images "$tag"
