"""The FastAPI matting service: streaming sessions, REST, registry, admin."""
