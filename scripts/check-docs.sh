#!/usr/bin/env bash
# The documentation stands on its own: every relative link in README.md and
# docs/*.md (and the other markdown files of the repository) resolves to a
# file or folder inside the repository, and nothing points at ../shared (a
# folder a user who clones the repository does not have).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

files=(README.md docs/*.md)
# Other markdown documents a reader follows links into.
for f in web/README.md bench/peers/README.md docs/bench/*.md; do
  [ -f "$f" ] && files+=("$f")
done

# Documents being written on another branch: a link to them only warns
# until they land. Remove an entry once its file is in the repository.
pending=()

fail=0
for f in "${files[@]}"; do
  dir=$(dirname "$f")
  # Inline links and images: [text](target) / ![alt](target), and reference
  # definitions: [id]: target. Code spans and fenced blocks are skipped.
  while IFS= read -r target; do
    [ -n "$target" ] || continue
    case "$target" in
      http://*|https://*|mailto:*|\#*) continue ;;
    esac
    path=${target%%#*}
    path=${path%%\?*}
    [ -n "$path" ] || continue
    if [[ "$path" == /* ]]; then
      resolved="$root$path"
    else
      resolved="$dir/$path"
    fi
    if [ ! -e "$resolved" ]; then
      rel=$(realpath -m --relative-to="$root" "$resolved")
      if [[ " ${pending[*]} " == *" $rel "* ]]; then
        echo "$f: warning: $target is not written yet (pending)" >&2
        continue
      fi
      echo "$f: broken link: $target" >&2
      fail=1
      continue
    fi
    real=$(realpath -m "$resolved")
    case "$real" in
      "$root"|"$root"/*) ;;
      *) echo "$f: link leads out of the repository: $target" >&2; fail=1 ;;
    esac
  done < <(
    awk '/^[[:space:]]*```/ { fence = !fence; next } !fence' "$f" |
      sed -E 's/`[^`]*`//g' |
      grep -oE '\]\([^) ]+( "[^"]*")?\)|^\[[^]]+\]:[[:space:]]*[^[:space:]]+' |
      sed -E 's/^\]\(([^) ]+).*\)$/\1/; s/^\[[^]]+\]:[[:space:]]*//' || true
  )
done

# No mention of the shared folder outside the repository, linked or not.
if grep -rnE '\.\./shared|/work/shared' README.md docs web scripts bench \
    --include='*.md' --include='*.sh' --include='*.js' --include='*.mjs' \
    --include='*.html' --include='*.c' --include='*.toml' --include='*.json' |
    grep -v '^scripts/check-docs.sh:'; then
  echo "the lines above point at ../shared, which is not part of the repository" >&2
  fail=1
fi

if [ "$fail" != 0 ]; then
  echo "check-docs: FAILED" >&2
  exit 1
fi
echo "check-docs: ${#files[@]} markdown files, every relative link resolves inside the repository"
