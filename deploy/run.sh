#!/usr/bin/env bash
# Submit an actprep job to Dataflow from this workstation (the image from build.sh runs the
# workers; the job is built here, so install the same actprep: pip install ".[gcp]").
# docs/DATAFLOW.md.
#
#   PROJECT=my-project BUCKET=my-bucket DATASET=kinetics \
#   MANIFEST=gs://my-bucket/k400/train.csv VIDEO_ROOT=gs://my-bucket/k400/videos \
#   OUTPUT=gs://my-bucket/k400-train deploy/run.sh [more actprep or Beam options...]
#
# Optional: REGION, TAG or IMAGE (as for build.sh), JOB_NAME, MODALITIES (rgb,flow,mfcc),
# GPU (l4 or t4) or MACHINE_TYPE and GPU_TYPE, GPU_COUNT (1), MAX_WORKERS (10),
# DISK_SIZE_GB (100), WORKER_THREADS (8), FLOW_BATCH_SIZE (64), DRY_RUN=1 (print only).
# Rerunning the same command resumes the job (docs/RESUME.md).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

require PROJECT BUCKET DATASET MANIFEST OUTPUT
if [[ -z "${IMAGE:-}" ]]; then
    check_beam_version  # our image: its Beam must be the one that builds the job here
fi
resolve_image
resolve_job_name

args=(run
    --dataset "$DATASET"
    --manifest "$MANIFEST"
    --output "$OUTPUT"
    --modalities "$MODALITIES"
    --device auto
    --flow-backend auto
    --flow-batch-size "$FLOW_BATCH_SIZE"
)
if [[ -n "${VIDEO_ROOT:-}" ]]; then
    args+=(--video-root "$VIDEO_ROOT")
fi

args+=(
    --runner=DataflowRunner
    "--project=$PROJECT"
    "--region=$REGION"
    "--job_name=$JOB_NAME"
    "--temp_location=gs://$BUCKET/tmp"
    "--staging_location=gs://$BUCKET/staging"
    "--machine_type=$MACHINE_TYPE"
    "--max_num_workers=$MAX_WORKERS"
)
for experiment in "${GPU_EXPERIMENTS[@]}"; do
    args+=("--experiments=$experiment")
done
while IFS= read -r option; do
    args+=("--$option")
done < <(gpu_worker_options "$IMAGE")

run actprep "${args[@]}" "$@"
