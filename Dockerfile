# syntax=docker/dockerfile:1
# The image of every Airflow service in docker-compose.yml: Airflow 3.3.2 on Python 3.11 with
# taisu-etl, its `ml` and `airflow` extras and its DAGs installed at build time, so a container
# starts without installing anything.
#
#   docker build -t taisu-etl-airflow:3.3.2 .                          # CPU torch (every service)
#   docker build -t taisu-etl-airflow:3.3.2-gpu --build-arg TORCH=gpu .  # CUDA torch (the `gpu` queue's worker)
#
# It extends the official image the way its documentation says (docker-stack "Building the image"):
# apt packages as root, then back to the `airflow` user for pip (pip refuses to run as root there;
# packages go to the airflow user's ~/.local environment), with `apache-airflow==${AIRFLOW_VERSION}`
# in every pip command so that no dependency can up- or downgrade Airflow itself.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

# What .ci/system-deps installs on a build machine: a CJK font for the dataset card's word cloud
# (Chinese is drawn as boxes without one), pigz (TaiSu's users open .tgz parts with it) and
# libjpeg-turbo's jpegtran (an EXIF-rotated JPEG is turned upright losslessly with it).
USER root
RUN apt-get update \
  && apt-get install -y --no-install-recommends fonts-wqy-zenhei pigz libjpeg-turbo-progs \
  && apt-get autoremove -yqq --purge \
  && apt-get clean \
  && rm -rf /var/lib/apt/lists/*
# TAISU_HOME: writable by the arbitrary uid (group 0) that docker-compose.yml runs the containers as.
RUN mkdir -p /opt/taisu/dags /opt/taisu/var \
  && chown -R airflow:0 /opt/taisu \
  && chmod -R g+rwX /opt/taisu
USER airflow

# torch first, pinned as the project pins it and from the index that has the wanted build: PyPI's
# default torch for Linux is a CUDA build (gigabytes of nvidia-* packages), so the CPU variant
# comes from PyTorch's CPU index (torch 2.13.0+cpu, torchvision 0.28.0+cpu: `==2.13.0` in the
# project's `ml` extra accepts the +cpu local version, so the next step keeps them). TORCH=gpu
# takes PyPI's CUDA build, for the worker of the `gpu` queue (score, caption) on an NVIDIA host.
ARG TORCH=cpu
RUN case "${TORCH}" in \
      cpu) index=https://download.pytorch.org/whl/cpu ;; \
      gpu) index=https://pypi.org/simple ;; \
      *) echo "TORCH must be cpu or gpu, not '${TORCH}'" >&2; exit 2 ;; \
    esac \
  && pip install --no-cache-dir --index-url "${index}" "apache-airflow==${AIRFLOW_VERSION}" torch==2.13.0 torchvision==0.28.0

# Airflow's constraints (the file the image was built with, ${HOME}/constraints.txt) hold for
# every package they name, except those our model stack pins or needs in other versions: torch
# and torchvision (installed above), open_clip_torch and transformers (pinned by the `ml` extra)
# and what those two require in lockstep (timm, tokenizers, huggingface-hub, hf-xet, safetensors,
# sentencepiece). Those lines are dropped from a copy of the file; every other package the
# project needs resolves within Airflow's tested versions (or the build stops with pip's conflict
# message, never a silent change of Airflow's dependencies). UNCONSTRAINED names them.
ARG UNCONSTRAINED="torch torchvision open-clip-torch transformers timm tokenizers huggingface-hub hf-xet safetensors sentencepiece"
COPY --chown=airflow:0 pyproject.toml README.md /tmp/taisu-src/
COPY --chown=airflow:0 taisu_etl /tmp/taisu-src/taisu_etl
RUN pattern="$(echo ${UNCONSTRAINED} | sed -e 's/[-_.]/[-_.]/g' -e 's/ /|/g')" \
  && grep -viE "^(${pattern})==" "${HOME}/constraints.txt" > /tmp/constraints.txt \
  && pip install --no-cache-dir --constraint /tmp/constraints.txt \
       "apache-airflow==${AIRFLOW_VERSION}" "/tmp/taisu-src[ml,airflow]" \
  && rm -rf /tmp/taisu-src /tmp/constraints.txt

# The DAGs, baked in (AIRFLOW__CORE__DAGS_FOLDER in docker-compose.yml points here).
COPY --chown=airflow:0 dags /opt/taisu/dags

# Models come from local files or the object store: nothing is downloaded at run time.
ENV HF_HUB_OFFLINE=1 \
    TAISU_HOME=/opt/taisu/var

# Fail the build, not the first task, if the install is not what the services need.
RUN python -m compileall -q /opt/taisu/dags \
  && python -c "import sys, torch, taisu_etl.tasks, taisu_etl.models; \
v = torch.__version__; cuda = torch.version.cuda; want = sys.argv[1]; \
assert v.split('+')[0] == '2.13.0', v; \
assert (cuda is None) == (want == 'cpu'), f'torch {v} (CUDA {cuda}) is not a {want} build'; \
print('torch', v, 'CUDA', cuda)" "${TORCH}" \
  && taisu-etl --help > /dev/null
