#!/usr/bin/env bash
# Regenerates man/*.1 from the applets' clap definitions.
set -euo pipefail
cd "$(dirname "$0")/.."
XOS_UPDATE_MAN=1 cargo test --bin xos man_pages_are_current -- --quiet
