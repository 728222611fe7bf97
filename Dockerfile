# rlreg image: CPU by default, CUDA through a build argument.
#
#   docker build -t rlreg .                                         # CPU:  torch 2.13.0+cpu
#   docker build --build-arg TORCH_VARIANT=cu128 -t rlreg:cuda .    # CUDA: torch 2.13.0+cu128
#
#   docker run --rm rlreg --help
#   docker run --rm -v "$PWD/out:/work/out" rlreg <command> ...     # write results to the host's ./out
#   docker run --rm --gpus all rlreg:cuda <command> --device cuda   # needs the NVIDIA Container Toolkit on the host
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): `cpu`, or a CUDA
# variant that publishes the torch version pinned in constraints.txt (check https://download.pytorch.org/whl/torch/).
# The CUDA wheels bring the CUDA runtime libraries with them (nvidia-* wheels, from the same index), so the slim
# Python base serves both variants; the host needs only an NVIDIA driver recent enough for that CUDA version.

ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# 1. torch alone, from the chosen variant's index, in its own layer (the big one; it changes only with the
#    variant or the pin). The version comes from constraints.txt, the single source of the pin. Only that index is
#    consulted (it mirrors torch's own dependencies), so PyPI's default CUDA build can never be picked instead.
COPY constraints.txt ./
RUN torch_pin="$(grep -E '^torch==' constraints.txt | tr -d '[:space:]')" \
 && test -n "$torch_pin" \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "$torch_pin" \
 && python -c 'import os, torch; v = os.environ["TORCH_VARIANT"]; \
print("torch", torch.__version__, "cuda", torch.version.cuda); \
raise SystemExit(0 if (torch.version.cuda is None) == (v == "cpu") else "torch is not the " + v + " build")'

# 2. rlreg and its other dependencies from PyPI. The installed torch (2.13.0+<variant>) satisfies the
#    constraint torch==2.13.0 (PEP 440 ignores the local +<variant> label), so pip keeps it and installs no other.
COPY . .
RUN pip install -c constraints.txt . \
 && python -c 'import os, torch; v = os.environ["TORCH_VARIANT"]; \
print("torch", torch.__version__, "cuda", torch.version.cuda); \
raise SystemExit(0 if (torch.version.cuda is None) == (v == "cpu") else "torch was replaced: not the " + v + " build")' \
 && rlreg --help

# Run as an unprivileged user in a writable working directory (mount ./out or data here).
RUN useradd --create-home --uid 1000 rlreg && mkdir -p /work && chown rlreg:rlreg /work
USER rlreg
WORKDIR /work

ENTRYPOINT ["rlreg"]
CMD ["--help"]
