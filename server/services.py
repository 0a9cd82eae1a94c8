"""Everything one app instance runs, built from its Settings, started and stopped with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import cv2

from ptq4vm_core.engine import ModelNotFoundError
from server.calibration.default_build import DefaultModelBuilder
from server.calibration.manager import CalibrationManager
from server.inference.compiles import ShapeCompiler
from server.inference.scheduler import Scheduler
from server.jobs.manager import JobManager, RemoteMatting
from server.media.sniff import MediaLimits
from server.metrics import Metrics
from server.models.registry import ModelRegistry, ModelUnavailableError, engine_loader
from server.settings import Settings
from server.streaming.capacity import SessionManager
from server.webrtc.peers import WhipPeers

logger = logging.getLogger(__name__)


def media_limits(settings: Settings) -> MediaLimits:
    return MediaLimits(settings.max_pixels, settings.max_video_seconds, settings.max_video_frames)


def remote_matting(settings: Settings) -> RemoteMatting | None:
    """Video jobs on Ray when PTQ4VM_RAY_ADDRESS is set (Settings checked Ray is installed)."""
    if settings.ray_address is None:
        return None
    # Ray is an optional extra: its module is imported only when a cluster is configured.
    from server.jobs.on_ray import RayJobRunner

    return RayJobRunner(settings.ray_address, settings.home)


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    scheduler: Scheduler
    sessions: SessionManager
    jobs: JobManager
    default_builder: DefaultModelBuilder
    compiler: ShapeCompiler
    calibrations: CalibrationManager
    whip: WhipPeers = field(init=False)  # WebRTC publishers: their sessions are `sessions`'
    ready: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        cv2.setNumThreads(settings.opencv_threads)  # process-wide: the server's images
        metrics = Metrics()
        registry = ModelRegistry(
            settings.home,
            metrics=metrics,
            max_idle=settings.max_idle_models,
            override=settings.model,
            loader=engine_loader(settings.engine),
        )
        scheduler = Scheduler(
            workers=settings.infer_workers,
            max_batch=settings.max_batch,
            batch_share=settings.batch_lane_share,
            metrics=metrics,
            engine_owns_cores=settings.engine_owns_cores,
        )
        sessions = SessionManager(
            max_sessions=settings.max_sessions,
            ttl_s=settings.session_ttl_s,
            scheduler=scheduler,
            metrics=metrics,
        )
        jobs = JobManager(
            settings.jobs_dir,
            registry=registry,
            scheduler=scheduler,
            metrics=metrics,
            workers=settings.job_workers,
            max_jobs=settings.max_jobs,
            ttl_s=settings.job_ttl_s,
            nice=settings.job_nice,
            limits=media_limits(settings),
            max_job_seconds=settings.max_job_seconds,
            remote=remote_matting(settings),
        )
        builder = DefaultModelBuilder(settings, registry, metrics)
        compiler = ShapeCompiler(nice=settings.job_nice)
        calibrations = CalibrationManager(settings, registry)
        services = cls(
            settings, metrics, registry, scheduler, sessions, jobs, builder, compiler, calibrations
        )
        services.whip = WhipPeers(services)
        return services

    async def start(self) -> None:
        """Load the active model (sessions then start without a wait), start the background
        tasks and, where wanted, the embedded default build."""
        self.jobs.start(asyncio.get_running_loop())
        try:
            lease = await asyncio.to_thread(self.registry.acquire, None)
        except (ModelNotFoundError, ModelUnavailableError) as exc:
            self.registry.fall_back(str(exc))
            lease = await asyncio.to_thread(self.registry.acquire, None)
        with lease:
            self.metrics.set_active_model(lease.version, lease.engine.name)
        logger.info("serving model %s (%s)", lease.version, lease.engine.name)
        self._tasks = [
            asyncio.create_task(self.sessions.reap_forever(), name="ptq4vm-session-reaper"),
            asyncio.create_task(self.jobs.reap_forever(), name="ptq4vm-job-reaper"),
        ]
        self.default_builder.maybe_start()
        self.calibrations.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await asyncio.to_thread(self.calibrations.close)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.whip.close()
        self.sessions.close()
        await asyncio.to_thread(self.default_builder.stop)
        await asyncio.to_thread(self.jobs.close)
        await self.scheduler.aclose()
        self.compiler.close()
