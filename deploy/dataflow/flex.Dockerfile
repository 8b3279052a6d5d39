# Flex Template launcher image: builds the job graph and submits it to Dataflow.
#
#   # Workers install the package from setup.py at start-up (CPU workers, no worker image):
#   gcloud builds submit --tag REGION-docker.pkg.dev/PROJECT/REPO/s3d-launcher -f deploy/dataflow/flex.Dockerfile .
#   # Workers run a prebuilt worker image (GPU workers; launch with sdk_container_image=IMAGE):
#   docker build --target launcher-prebuilt -f deploy/dataflow/flex.Dockerfile \
#       -t REGION-docker.pkg.dev/PROJECT/REPO/s3d-launcher:prebuilt .

# Google's launcher base for Python 3.11 templates (the workers' Python minor version).
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base AS launcher-prebuilt

ENV PIP_NO_CACHE_DIR=1
WORKDIR /template
COPY setup.py README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY decoder ./decoder
COPY s3d ./s3d
COPY synthetic ./synthetic
COPY vector_index ./vector_index
COPY storage ./storage
COPY captions ./captions

# The launcher runs this file with the template's parameters as flags.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipeline/extract.py

# The launcher itself needs the package importable to build the graph.
RUN pip install '.[gcp]' && pip check

# No FLEX_TEMPLATE_PYTHON_SETUP_FILE above: with it, every worker, prebuilt image or not,
# builds and installs the package again at start-up, which needs PyPI (Dataflow's "Configure
# Flex Templates" page: leave it out when the worker image has the dependencies).

# The default target: also ships setup.py, for workers without a worker image.
FROM launcher-prebuilt AS launcher
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py
