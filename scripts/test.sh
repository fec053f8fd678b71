#!/usr/bin/env bash
# The test command of README.md: every crate's unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
