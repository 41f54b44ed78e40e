#!/usr/bin/env bash
# Build the actprep image (Beam SDK worker and Flex Template launcher in one), push it to
# Artifact Registry and write the Flex Template spec to Cloud Storage. docs/DATAFLOW.md.
#
#   PROJECT=my-project BUCKET=my-bucket [REGION=us-central1] [TAG=...] deploy/build.sh
#
# BUILDER=cloudbuild (default: gcloud builds submit, no local Docker needed) or docker
# (docker build and docker push from this machine). IMAGE and TEMPLATE_FILE override the
# names derived from PROJECT, REGION, REPOSITORY (actprep), BUCKET and TAG (the commit).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

require PROJECT BUCKET
resolve_image
resolve_template_file
METADATA="deploy/flex-template/metadata.json"
cd "$REPO_ROOT"

# The committed metadata must describe this code's options (tests check it too).
if python3 -c "import actprep.commands.flex" 2>/dev/null; then
    if ! python3 -m actprep.commands.flex --metadata | cmp -s - "$METADATA"; then
        die "$METADATA is out of date: python3 -m actprep.commands.flex --metadata > $METADATA"
    fi
fi

echo "build.sh: image $IMAGE" >&2
case "${BUILDER:-cloudbuild}" in
    cloudbuild)
        run gcloud builds submit --project "$PROJECT" --config deploy/cloudbuild.yaml \
            --substitutions "_IMAGE=$IMAGE" .
        ;;
    docker)
        run docker build -f deploy/Dockerfile -t "$IMAGE" .
        run docker push "$IMAGE"
        ;;
    *) die "BUILDER=${BUILDER}: use cloudbuild or docker" ;;
esac

echo "build.sh: Flex Template $TEMPLATE_FILE" >&2
run gcloud dataflow flex-template build "$TEMPLATE_FILE" \
    --project "$PROJECT" \
    --image "$IMAGE" \
    --sdk-language PYTHON \
    --metadata-file "$METADATA"

echo "build.sh: done; launch with TAG=$TAG deploy/run-flex.sh (or deploy/run.sh)" >&2
