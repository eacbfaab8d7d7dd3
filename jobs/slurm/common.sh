# Sourced by the jobs/slurm/*.sbatch scripts (from the repository they were submitted from).
# Resolves the repository, the Python interpreter and the program, and logs where the job runs.
#
#   HISTAUG_REPO      repository root       default: $SLURM_SUBMIT_DIR (submit from the repo root)
#   HISTAUG_PYTHON    interpreter           default: $HISTAUG_REPO/.venv/bin/python, else python3
#   HISTAUG_PROGRAM   what each task runs   default: -m histaug_tf.<stage of the script>
#                     (e.g. jobs/slurm/cluster_check.py to check the cluster first)
#   HISTAUG_FLAGFILE  --flagfile passed to the program (optional)
#   HISTAUG_OUTDIR    --outdir passed to the program (optional; else from the flagfile)

HISTAUG_REPO=${HISTAUG_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$HISTAUG_REPO" || { echo "error: HISTAUG_REPO=$HISTAUG_REPO: no such directory" >&2; exit 1; }
if [ -z "${HISTAUG_PYTHON:-}" ]; then
  if [ -x "$HISTAUG_REPO/.venv/bin/python" ]; then HISTAUG_PYTHON=$HISTAUG_REPO/.venv/bin/python
  else HISTAUG_PYTHON=python3; fi
fi
export PYTHONPATH=$HISTAUG_REPO${PYTHONPATH:+:$PYTHONPATH}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# histaug_args STAGE: fills the array PROG (interpreter + program) and ARGS (flagfile/outdir flags)
histaug_args() {
  local program=${HISTAUG_PROGRAM:-"-m histaug_tf.$1"}
  read -r -a PROG <<< "$HISTAUG_PYTHON $program"
  ARGS=()
  if [ -n "${HISTAUG_FLAGFILE:-}" ]; then
    [ -f "$HISTAUG_FLAGFILE" ] || { echo "error: HISTAUG_FLAGFILE=$HISTAUG_FLAGFILE: no such file" >&2; exit 1; }
    ARGS+=("--flagfile=$HISTAUG_FLAGFILE")
  fi
  if [ -n "${HISTAUG_OUTDIR:-}" ]; then ARGS+=("--outdir=$HISTAUG_OUTDIR"); fi
}

histaug_log() { echo "[$(date '+%F %T')] histaug job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ array task $SLURM_ARRAY_TASK_ID}: $*"; }

# Requeue this job shortly before its time limit (sbatch --signal=B:USR1@<seconds>): the rerun
# resumes from the last checkpoint because it runs the same command with the same --outdir.
histaug_requeue_on_usr1() {
  trap 'histaug_log "time limit near (USR1): requeueing"; scontrol requeue "$SLURM_JOB_ID"' USR1
}

# Run a command in the background and wait for it, so that trapped signals are handled promptly.
histaug_run() {
  "$@" &
  local pid=$!
  local rc=0
  while true; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break   # wait returned because of a trapped signal: keep waiting
  done
  return "$rc"
}
