# Sourced at the start of each command on the lent GPU machine (see tools/gpu/README.md).
# Installs the wheels its image lacks (carried in .whl/, made by ../shared/device/wheels.sh
# here) and amemctl itself, editable, with the example plugin.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/amemctl-example >/dev/null 2>&1 || { echo "amemctl install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
