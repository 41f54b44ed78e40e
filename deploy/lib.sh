# shellcheck shell=bash
# Shared by build.sh, run.sh and run-flex.sh (sourced, not run): settings from the
# environment, the image and template names, the GPU worker options. docs/DATAFLOW.md.

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"

die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 2
}

# require NAME...: each must be set and non-empty in the environment
require() {
    local name missing=()
    for name in "$@"; do
        if [[ -z "${!name:-}" ]]; then
            missing+=("$name")
        fi
    done
    if ((${#missing[@]})); then
        die "set ${missing[*]} in the environment (see docs/DATAFLOW.md), e.g." \
            "PROJECT=my-project BUCKET=my-bucket REGION=us-central1 $0"
    fi
}

# The image tag defaults to the commit of the image's sources, so that a job submitted from
# a checkout runs on the image built from the same code ("-dirty" when they are modified).
default_tag() {
    local sha
    sha="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null)" \
        || die "not a git checkout: set TAG to the image tag"
    if ! git -C "$REPO_ROOT" diff --quiet HEAD -- setup.py README.md schemas extractors \
        pipelines readers deploy 2>/dev/null; then
        sha="$sha-dirty"
    fi
    printf '%s\n' "$sha"
}

# Settings with defaults (override any of them in the environment).
REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-actprep}"
GPU="${GPU:-l4}"
case "$GPU" in
    l4) default_machine=g2-standard-8 default_accelerator=nvidia-l4 ;;
    t4) default_machine=n1-standard-8 default_accelerator=nvidia-tesla-t4 ;;
    *) die "GPU=$GPU: use l4 or t4, or set MACHINE_TYPE and GPU_TYPE yourself" ;;
esac
MACHINE_TYPE="${MACHINE_TYPE:-$default_machine}"
GPU_TYPE="${GPU_TYPE:-$default_accelerator}"
GPU_COUNT="${GPU_COUNT:-1}"
DISK_SIZE_GB="${DISK_SIZE_GB:-100}"
WORKER_THREADS="${WORKER_THREADS:-8}"
MAX_WORKERS="${MAX_WORKERS:-10}"
MODALITIES="${MODALITIES:-rgb,flow,mfcc}"
FLOW_BATCH_SIZE="${FLOW_BATCH_SIZE:-64}"

resolve_tag() {
    if [[ -z "${TAG:-}" ]]; then
        TAG="$(default_tag)" || exit 2
    fi
}

# IMAGE: the image in Artifact Registry, unless given
resolve_image() {
    if [[ -z "${IMAGE:-}" ]]; then
        require PROJECT
        resolve_tag
        IMAGE="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/actprep:$TAG"
    fi
}

# TEMPLATE_FILE: the Flex Template spec in Cloud Storage, unless given
resolve_template_file() {
    if [[ -z "${TEMPLATE_FILE:-}" ]]; then
        require BUCKET
        resolve_tag
        TEMPLATE_FILE="gs://$BUCKET/templates/actprep-$TAG.json"
    fi
}

# JOB_NAME: unless given, actprep-UTC date and time (Dataflow: lowercase, digits, dashes)
resolve_job_name() {
    JOB_NAME="${JOB_NAME:-actprep-$(date -u +%Y%m%d-%H%M%S)}"
}

# The Beam/Dataflow options of a GPU worker pool, as NAME=VALUE (one SDK process per VM,
# hence per GPU; its threads share the GPU). docs/DATAFLOW.md says what each one does.
gpu_worker_options() {
    local image="$1"
    printf '%s\n' \
        "sdk_container_image=$image" \
        "sdk_location=container" \
        "dataflow_service_options=worker_accelerator=type:$GPU_TYPE;count:$GPU_COUNT;install-nvidia-driver" \
        "disk_size_gb=$DISK_SIZE_GB" \
        "number_of_worker_harness_threads=$WORKER_THREADS"
}

# shellcheck disable=SC2034  # used by the scripts that source this file
GPU_EXPERIMENTS=(use_runner_v2 no_use_multiple_sdk_containers)

# The job is built by the Beam of the Python that runs `actprep` here, and run by the
# image's (BEAM_VERSION in the Dockerfile): with a custom container they must be the same.
check_beam_version() {
    local want have shebang interpreter=()
    want="$(sed -n 's/^ARG BEAM_VERSION=//p' "$DEPLOY_DIR/Dockerfile")"
    shebang="$(head -n 1 "$(command -v actprep)" 2>/dev/null)" || shebang=""
    read -r -a interpreter <<< "${shebang#\#!}"
    if [[ "$shebang" != "#!"* || ${#interpreter[@]} -eq 0 ]]; then
        interpreter=(python3)
    fi
    have="$("${interpreter[@]}" -c 'import apache_beam; print(apache_beam.__version__)' \
        2>/dev/null)" || return 0  # cannot tell: Beam warns at submission
    if [[ "$have" != "$want" ]]; then
        die "actprep here runs apache-beam $have, the image $want (deploy/Dockerfile):" \
            "pip install \"apache-beam[gcp]==$want\", or build the image for $have"
    fi
}

dry_run() {
    [[ "${DRY_RUN:-}" == 1 ]]
}

# run CMD...: runs it, or with DRY_RUN=1 only prints it (shell-quoted)
run() {
    if dry_run; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}
