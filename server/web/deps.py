"""Dependencies: the app's services, injected per request (tests can override `get_services`)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends
from starlette.requests import HTTPConnection

from server.calibration.manager import CalibrationManager
from server.inference.compiles import ShapeCompiler
from server.inference.scheduler import Scheduler
from server.jobs.manager import JobManager
from server.metrics import Metrics
from server.models.registry import ModelRegistry
from server.services import Services
from server.settings import Settings


def get_services(conn: HTTPConnection) -> Services:
    return cast(Services, conn.app.state.services)


def get_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


def get_registry(services: Annotated[Services, Depends(get_services)]) -> ModelRegistry:
    return services.registry


def get_scheduler(services: Annotated[Services, Depends(get_services)]) -> Scheduler:
    return services.scheduler


def get_compiler(services: Annotated[Services, Depends(get_services)]) -> ShapeCompiler:
    return services.compiler


def get_jobs(services: Annotated[Services, Depends(get_services)]) -> JobManager:
    return services.jobs


def get_calibrations(services: Annotated[Services, Depends(get_services)]) -> CalibrationManager:
    return services.calibrations


def get_metrics(services: Annotated[Services, Depends(get_services)]) -> Metrics:
    return services.metrics


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
CompilerDep = Annotated[ShapeCompiler, Depends(get_compiler)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CalibrationsDep = Annotated[CalibrationManager, Depends(get_calibrations)]
