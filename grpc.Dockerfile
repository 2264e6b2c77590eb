# The gRPC surface's container (terraform/modules/grpc): `python -m talon.grpc` on $PORT,
# cleartext HTTP/2 (Cloud Run's h2c port). Built by cloudbuild.yaml's `image` step:
#   docker build -f grpc.Dockerfile -t IMAGE .
# The functions' Python and exactly their locked packages (requirements.lock, with hashes);
# talon/ is copied as the function zips carry it, not installed.
FROM python:3.12-slim
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY shared/talon ./talon
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1 PORT=8080
USER 65534:65534
EXPOSE 8080
CMD ["python", "-m", "talon.grpc"]
