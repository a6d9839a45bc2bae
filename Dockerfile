# sendreturn-mood server image: the runtime only (no torch), the shipped model and config.
#   docker build -t sendreturn-mood .
#   docker run -p 8765:8765 sendreturn-mood                                  # one process, rooms in memory
#   docker run -p 8765:8765 sendreturn-mood serve --host 0.0.0.0 --broker redis://redis:6379/0 --workers 2
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1

# libsndfile for soundfile (analyze); everything else comes as wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY sendreturn_mood ./sendreturn_mood
COPY exported_models ./exported_models
COPY training ./training
RUN pip install . && useradd --system --no-create-home sendreturn
USER sendreturn

EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import json,sys,urllib.request; h=json.load(urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=2)); sys.exit(h['status'] == 'shutting_down')"
ENTRYPOINT ["python", "-m", "sendreturn_mood"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765"]
