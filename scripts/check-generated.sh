#!/usr/bin/env bash
# Fails if the committed generated code is missing, stale or not reproducible:
# regenerates everything, then expects no change under api/gen or in the
# embedded OpenAPI document.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/generate.sh

# (ARCHITECTURE.md's endpoint table is checked by a test in api/endpoints.)
paths=(api/gen api/openapi/flotilla.swagger.json)
changes="$(git status --porcelain --untracked-files=all -- "${paths[@]}")"
if [[ -n $changes ]]; then
	{
		echo
		echo "check-generated: generated code is out of date or not committed:"
		echo "$changes"
		echo
		git --no-pager diff --stat -- "${paths[@]}"
		echo
		echo "Run scripts/generate.sh and commit the result."
	} >&2
	exit 1
fi
echo "check-generated: generated code is up to date" >&2
