"""The FastAPI matting service, one subpackage per part:

* `web`: the HTTP app (factory, middleware, dependencies, responses, routers, static files);
* `streaming`: live WebSocket sessions; `jobs`: video jobs; `calibration`: recalibration and
  the embedded default build;
* `inference`: the scheduler shared by all three; `models`: the registry; `media`: untrusted
  media checks and the video decoder child.

Beside them: `command`/`main` (`ptq4vm serve` under uvicorn), `services` (builds and starts
every long-lived service), `settings`, `metrics`, `addresses` (who a client is), `redact`
(error texts without server paths) and `lifeline` (children that die with the server). The
import-linter contracts in pyproject.toml state how the parts may depend on each other.
"""
