# One image for every nurture process: api, worker, scheduler and the one-shot migration.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY channels ./channels
RUN pip install --no-cache-dir '.[providers]'
COPY workflows ./workflows
COPY templates ./templates
ENV NURTURE_WORKFLOWS=/app/workflows NURTURE_TEMPLATES=/app/templates
ENTRYPOINT ["nurture"]
