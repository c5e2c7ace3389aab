# One image for every role (web, worker, beat, agent, migrate); the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ORCHESTRATOR_VAR_DIR=/var/lib/orchestrator WHITENOISE_USE_FINDERS=false
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Static files are collected at build time, with throwaway settings: nothing of them is kept.
RUN DEBUG=true SECRET_KEY=build-only ORCHESTRATOR_VAR_DIR=/tmp/build python manage.py collectstatic --noinput \
    && mkdir -p /var/lib/orchestrator && cp -r /tmp/build/static /var/lib/orchestrator/static && rm -rf /tmp/build \
    && useradd --uid 10001 --home-dir /var/lib/orchestrator orchestrator \
    && chown -R orchestrator /var/lib/orchestrator
USER orchestrator
EXPOSE 8000 8080
CMD ["gunicorn", "orchestrator.wsgi", "-w", "2", "-k", "gthread", "--threads", "8", "-b", "0.0.0.0:8000"]
