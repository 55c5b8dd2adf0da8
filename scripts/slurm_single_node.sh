#!/usr/bin/env bash
# The one-node SLURM of the tests and CI: scripts/slurm_cluster.sh with --nodes 1 (this host at
# 127.0.0.1), kept under this name for its callers.
#   bash scripts/slurm_single_node.sh install | start DIR | stop DIR
set -euo pipefail
HERE=$(dirname "$0")
case "${1:-}" in
start) exec bash "$HERE/slurm_cluster.sh" start --nodes 1 "${2:?start needs a folder}" ;;
*) exec bash "$HERE/slurm_cluster.sh" "$@" ;;
esac
