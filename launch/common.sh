# shellcheck shell=bash
# Helpers sourced by the launch scripts: quoting, dry-run-aware execution.

DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

# One shell word: bare when safe, else single-quoted (copy-pasteable).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# All arguments as one shell-quoted line.
quote_args() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

# Prints the command ("+ cmd"); runs it unless --dry_run.
run() {
  printf '+ %s\n' "$(quote_args "$@")"
  if [[ $DRY_RUN == 1 ]]; then
    return 0
  fi
  "$@"
}

# The value of a --flag=value argument, or dies naming the flag.
flag_value() {
  [[ $1 == *=* ]] || die "$1 needs a value: ${1}=..."
  printf '%s' "${1#*=}"
}

# Directory of the checkout these scripts belong to.
repo_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}
