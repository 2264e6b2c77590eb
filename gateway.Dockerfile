# The gateway as a Cloud Run service under Talon's own server (gateway_server = "talon",
# terraform/modules/gateway_service): the SAME packaged gateway function the Cloud Run function
# deploys (scripts/package_functions.py's dist/functions/gateway.zip: main.py, talon/, skills/,
# ui/dist and requirements.txt, the lock under --require-hashes), unpacked into /app and
# served by `python -m talon.serve` (functions-framework's app and gunicorn application,
# Talon's worker and stream hub) with FUNCTION_TARGET/FUNCTION_SOURCE as functions-framework
# reads them. Built by cloudbuild.yaml's `gateway-image` step after the package step:
#   python scripts/package_functions.py --out dist/functions
#   docker build -f gateway.Dockerfile -t IMAGE .
# tests/test_gateway_image.py runs this ENV and CMD from an unpacked zip (no Docker there).
FROM python:3.12-slim
WORKDIR /app
COPY dist/functions/gateway.zip /tmp/gateway.zip
RUN python -m zipfile -e /tmp/gateway.zip /app \
    && rm /tmp/gateway.zip \
    && pip install --no-cache-dir --require-hashes -r requirements.txt \
    && python -m compileall -q /app
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1 PORT=8080 FUNCTION_TARGET=gateway FUNCTION_SOURCE=/app/main.py
USER 65534:65534
EXPOSE 8080
CMD ["python", "-m", "talon.serve"]
