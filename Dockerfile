# One image for every nurture process: api, worker, scheduler and the one-shot migration.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY channels ./channels
# The examples ship inside the package too (`nurture init`), so they are copied before install.
COPY workflows ./workflows
COPY templates ./templates
RUN pip install --no-cache-dir '.[providers]'
ENV NURTURE_WORKFLOWS=/app/workflows NURTURE_TEMPLATES=/app/templates
ENTRYPOINT ["nurture"]
