#!/usr/bin/env bash
# Launch an actprep job from the Flex Template that build.sh wrote (nothing but gcloud
# needed here). docs/DATAFLOW.md.
#
#   PROJECT=my-project BUCKET=my-bucket DATASET=kinetics \
#   MANIFEST=gs://my-bucket/k400/train.csv VIDEO_ROOT=gs://my-bucket/k400/videos \
#   OUTPUT=gs://my-bucket/k400-train deploy/run-flex.sh [name=value ...] [--gcloud-flag ...]
#
# Extra name=value arguments are more template parameters (the actprep run options with
# underscores, e.g. shard_size=200 flow_raw=true); extra --flag=value go to gcloud.
# Optional settings as for run.sh, plus TEMPLATE_FILE and LAUNCHER_MACHINE_TYPE
# (n1-standard-4: the launcher VM plans the job, reading the whole manifest).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

require PROJECT BUCKET DATASET MANIFEST OUTPUT
resolve_image
resolve_template_file
resolve_job_name

params=(
    "dataset=$DATASET"
    "manifest=$MANIFEST"
    "output=$OUTPUT"
    "modalities=$MODALITIES"
    "device=auto"
    "flow_backend=auto"
    "flow_batch_size=$FLOW_BATCH_SIZE"
)
if [[ -n "${VIDEO_ROOT:-}" ]]; then
    params+=("video_root=$VIDEO_ROOT")
fi
# Beam options for the workers, passed like template parameters (the template's program
# hands every name that is not an actprep option to Beam)
while IFS= read -r option; do
    params+=("$option")
done < <(gpu_worker_options "$IMAGE")

gcloud_flags=()
for arg in "$@"; do
    case "$arg" in
        --*) gcloud_flags+=("$arg") ;;
        *=*) params+=("$arg") ;;
        *) die "unexpected argument '$arg': template parameters as name=value, gcloud flags as --flag=value" ;;
    esac
done

# gcloud splits --parameters at commas, which modalities and the accelerator spec contain:
# "^~^" makes "~" the separator instead (gcloud topic escaping)
joined=""
for param in "${params[@]}"; do
    [[ "$param" != *"~"* ]] || die "a template parameter contains '~': $param"
    joined+="~$param"
done

experiments="$(IFS=,; printf '%s' "${GPU_EXPERIMENTS[*]}")"
run gcloud dataflow flex-template run "$JOB_NAME" \
    --project "$PROJECT" \
    --region "$REGION" \
    --template-file-gcs-location "$TEMPLATE_FILE" \
    --temp-location "gs://$BUCKET/tmp" \
    --staging-location "gs://$BUCKET/staging" \
    --launcher-machine-type "${LAUNCHER_MACHINE_TYPE:-n1-standard-4}" \
    --worker-machine-type "$MACHINE_TYPE" \
    --max-workers "$MAX_WORKERS" \
    --additional-experiments "$experiments" \
    --parameters "^~^${joined#"~"}" \
    ${gcloud_flags[@]+"${gcloud_flags[@]}"}
