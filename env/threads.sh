# Thread pinning for shell jobs: cap every BLAS/OpenMP/numexpr/Polars thread pool at N threads.
#
#   source env/threads.sh [N]             # bash/zsh
#   PLOUTOS_THREADS=N . env/threads.sh    # POSIX sh, whose `.` takes no arguments
#
# N defaults to $PLOUTOS_THREADS, else 1 (one thread per process, as every env worker wants).
#
# Source it before starting Python: libraries read these variables once, when they load, so
# 256 processes on a node start 256 threads instead of 256 x 256. The variables are the same as
# ploutos.node.context.THREAD_VARIABLES (pin_threads / worker_environment do this from Python; torch
# follows OMP_NUM_THREADS). The learner of a run may raise its own torch threads afterwards;
# `ploutos hardware` prints the plan. Sets PLOUTOS_THREADS to N for scripts that want to log it.
_ploutos_threads="${1:-${PLOUTOS_THREADS:-1}}"
case "$_ploutos_threads" in
  ''|*[!0-9]*|0)
    echo "env/threads.sh: thread count must be a positive integer, got '$_ploutos_threads'" >&2
    unset _ploutos_threads
    return 2 2>/dev/null || exit 2 ;;
esac
for _ploutos_var in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS BLIS_NUM_THREADS \
                    NUMEXPR_NUM_THREADS VECLIB_MAXIMUM_THREADS POLARS_MAX_THREADS; do
  export "$_ploutos_var=$_ploutos_threads"
done
export PLOUTOS_THREADS="$_ploutos_threads"
unset _ploutos_threads _ploutos_var
