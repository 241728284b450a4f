# One image for every Linux role of the bridge (web, workers, beat, emulator terminals).
FROM python:3.11-slim
# Static files (admin, the docs page's Swagger UI) are collected into the image at build time and served
# by WhiteNoise from there (compressed variants included); the apps' own directories are not searched.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 BRIDGE_STATIC_ROOT=/app/static BRIDGE_STATIC_USE_FINDERS=false
WORKDIR /app
COPY requirements.txt .
COPY sdk ./sdk
RUN pip install -r requirements.txt
COPY . .
# Development settings for this one command: no secret exists at build time and nothing is connected to.
RUN BRIDGE_ENV=development BRIDGE_VAR_DIR=/tmp/bridge-build python manage.py collectstatic --no-input -v 0 \
    && rm -rf /tmp/bridge-build
EXPOSE 8000
CMD ["python", "-m", "workers.stack", "daphne", "-b", "0.0.0.0", "-p", "8000", "bridge_project.asgi:application"]
