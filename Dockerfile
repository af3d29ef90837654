# One image; the API and the worker are two commands. Migrations run before the API starts.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 mailsync
COPY --from=build /install /usr/local
WORKDIR /srv
USER mailsync
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
# API (default): migrate (safe to run twice), then serve.
CMD ["mailsync", "api", "--migrate", "--host", "0.0.0.0", "--port", "8000"]
# Worker: docker run IMAGE mailsync worker
