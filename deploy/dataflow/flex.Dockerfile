# Flex Template launcher image: builds the job graph and submits it to Dataflow.
#
#   gcloud builds submit --tag REGION-docker.pkg.dev/PROJECT/REPO/s3d-launcher:latest -f deploy/dataflow/flex.Dockerfile .

# Google's launcher base for Python 3.11 templates.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base

ENV PIP_NO_CACHE_DIR=1
WORKDIR /template
COPY setup.py README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY s3d ./s3d
COPY synthetic ./synthetic

# The launcher runs this file with the template's parameters as flags...
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipeline/extract.py
# ...and ships setup.py to the workers (unless the job names a worker image with sdk_container_image).
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py

# The launcher itself needs the package importable to build the graph.
RUN pip install '.[gcp]' && pip check
