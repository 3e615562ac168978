# Sourced by benchmarks/paper/run.sh and benchmarks/protocol/run.sh: a benchmark is a params file run
# through the pipeline users run.
#     repro FOLDER NAME [STAGE GLOB...]
# sets up (idempotent), writes FOLDER/dvc.yaml from FOLDER/params.yaml and reproduces it, or with globs
# only those stages and what they need; prints how long dvc repro took under NAME. Resumable: a rerun
# takes every finished stage from DVC's cache. REPRO_FLAGS: more `dvc repro` flags.
repro() {
    local folder=$1 name=$2
    shift 2
    bash scripts/setup.sh
    source scripts/env.sh
    source scripts/services.sh
    local start
    start=$(date +%s)
    recall pipeline "$folder/params.yaml"
    if [ $# -gt 0 ]; then
        dvc repro ${REPRO_FLAGS:-} --glob "${@/#/$folder/dvc.yaml:}"
        echo "$name $*: dvc repro took $(( $(date +%s) - start )) s"
    else
        dvc repro ${REPRO_FLAGS:-} "$folder/dvc.yaml"
        echo "$name: dvc repro took $(( $(date +%s) - start )) s"
    fi
}
