#!/usr/bin/env bash
# Here, before call 1 (tools/gpu/README.md): what the GPU machine needs and neither its image nor
# the copy of the working tree brings. Run it again after committing, so that the commit it
# names is the one that runs.
#   .whl/         zarr and its needs (the image lacks them) and setuptools >= 77 (what
#                 pyproject.toml's build needs; the install there is offline, without build
#                 isolation, so it would otherwise build with whatever setuptools the image has)
#   .whl/COMMIT   this checkout's commit ("-dirty" when tracked files have changes): the copy
#                 has no .git, so setup.sh exports it as AMEMCTL_GIT_COMMIT for run.json and
#                 the shipped phi's model card
#   .data/        the CIFAR-10 test images as an image folder (../shared does not travel)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/device/wheels.sh 'setuptools==80.9.0' >/dev/null
mkdir -p .data
[ -d .data/cifar10-test-jpeg ] || cp -r ../shared/data/cifar10-test-jpeg .data/
commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
echo "$commit" > .whl/COMMIT
echo "ready: $(ls .whl | grep -c '\.whl$') wheels in .whl/, $(find .data/cifar10-test-jpeg -type f | wc -l) images in .data/, commit $commit"
