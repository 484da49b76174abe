# Progress display for long setup steps. Source it; do not run it.
#
# On a terminal a step shows one live status line (spinner, elapsed seconds,
# bytes so far when a path to watch is given, and the command's latest output
# line) that is replaced by a "done" line. Elsewhere (CI, logs, pipes) a step
# prints exactly one line when it ends. Either way a failing step prints the
# last 40 lines of its output. SANDBOX_PROGRESS=plain forces the CI form,
# SANDBOX_PROGRESS=verbose streams the commands' own output instead.

# progress_live: whether to draw the live status line.
progress_live() {
  [ "${SANDBOX_PROGRESS:-auto}" != plain ] && [ -t 2 ] && [ "${TERM:-dumb}" != dumb ]
}

# progress_status LABEL T0 LOGFILE [WATCH]: draws the status line once.
PROGRESS_FRAME=0
progress_status() {
  local label="$1" t0="$2" logf="$3" watch="${4:-}" size="" last cols frames='|/-\'
  if [ -n "$watch" ] && [ -e "$watch" ]; then size=" $(du -sh "$watch" 2>/dev/null | cut -f1 || true)"; fi
  last=$( (tail -c 4000 "$logf" 2>/dev/null | tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n1) || true)
  cols=$(tput cols 2>/dev/null || echo 80)
  PROGRESS_FRAME=$(( (PROGRESS_FRAME + 1) % 4 ))
  printf '\r\033[K%s' "$(printf '%s %s %ss%s  %s' "${frames:PROGRESS_FRAME:1}" "$label" "$((SECONDS - t0))" "$size" "$last" | cut -c1-"$((cols - 1))")" >&2
}

# progress_end LABEL T0 RC LOGFILE: the step's one final line (and its output on failure).
progress_end() {
  local label="$1" t0="$2" rc="$3" logf="$4"
  progress_live && printf '\r\033[K' >&2
  if [ "$rc" -ne 0 ]; then
    printf '[progress] %s: FAILED (exit %s) after %ss; last output:\n' "$label" "$rc" "$((SECONDS - t0))" >&2
    tail -n 40 "$logf" >&2 || true
  else
    printf '[progress] %s: done in %ss\n' "$label" "$((SECONDS - t0))" >&2
  fi
  rm -f "$logf"
}

# progress [--watch PATH] LABEL CMD… — runs CMD (a command or shell function)
# with its output captured and progress shown as described above; returns
# CMD's exit status.
progress() {
  local watch=""
  if [ "${1:-}" = --watch ]; then watch="$2"; shift 2; fi
  local label="$1"; shift
  if [ "${SANDBOX_PROGRESS:-auto}" = verbose ]; then
    printf '[progress] %s ...\n' "$label" >&2
    "$@" >&2
    return
  fi
  local logf t0=$SECONDS rc=0 pid
  logf=$(mktemp "${TMPDIR:-/tmp}/sandbox-step.XXXXXX")
  # A background job keeps `set -e` in force inside shell functions (a
  # function called as `f || …` would run with it switched off).
  "$@" >"$logf" 2>&1 &
  pid=$!
  if progress_live; then
    while kill -0 "$pid" 2>/dev/null; do
      progress_status "$label" "$t0" "$logf" "$watch"
      sleep 0.25
    done
  fi
  wait "$pid" || rc=$?
  progress_end "$label" "$t0" "$rc" "$logf"
  return "$rc"
}
