"""One router per resource: stream (WebSocket), matte, jobs, models, health."""
