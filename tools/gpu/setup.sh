# Sourced at the start of each command on the lent GPU machine (see tools/gpu/README.md).
# Installs the wheels its image lacks (carried in .whl/, made by tools/gpu/prepare.sh here;
# setuptools among them, so the build does not depend on the image's) and amemctl itself,
# editable, with the example plugin. pip's output goes to /tmp/pip.log and its tail is shown
# only when an install fails. PIP_BREAK_SYSTEM_PACKAGES: the image's python3 may be a system
# Python marked externally managed (PEP 668), which refuses the editable install (--target is
# exempt); pips that predate the option ignore it.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/tmp/pip.log 2>&1 || { tail -n 20 /tmp/pip.log; echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# the copy of the tree has no .git: the commit prepare.sh wrote goes into run.json and model cards
[ -s .whl/COMMIT ] && export AMEMCTL_GIT_COMMIT="$(cat .whl/COMMIT)"
python3 -m pip install --no-index --no-deps --no-build-isolation -e . -e plugins/amemctl-example >>/tmp/pip.log 2>&1 || { tail -n 20 /tmp/pip.log; echo "amemctl install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, numpy, zarr; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'zarr', zarr.__version__, 'cuda', torch.cuda.is_available())"
