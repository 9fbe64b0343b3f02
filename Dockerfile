# One image for every CloudMart process: the four services, the orchestrator and `db init`.
# The process is chosen by the command, e.g. `docker run IMAGE serve order`; the Compose files
# in orchestration_pattern/ and choreography_pattern/ run one container per process and give
# each its own healthcheck (the ports differ, so the image declares none).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 cloudmart \
    && useradd --system --uid 10001 --gid cloudmart --create-home --home-dir /home/cloudmart \
       --shell /usr/sbin/nologin cloudmart

WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

# Then the project itself (see .dockerignore for what stays out of the build context).
COPY . .
RUN pip install --no-cache-dir . \
    && cd / && rm -rf /build

# Settings read `.env` / `.env.<profile>` from the working directory; the embedded mode's SQLite
# file lands here too. Configure containers through CLOUDMART_* environment variables instead.
WORKDIR /home/cloudmart
# Numeric, so that runtimes enforcing "run as non-root" can verify it.
USER 10001:10001

# order, inventory, payment, shipping, orchestrator
EXPOSE 8001 8002 8003 8004 8005

ENTRYPOINT ["cloudmart"]
CMD ["--help"]
