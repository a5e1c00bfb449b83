"""Pipelines, one per job kind, behind the interface in ``base``."""

from __future__ import annotations

from jobs.settings import Settings
from workers.pipelines.base import Artifact, Pipeline

__all__ = ["Artifact", "Pipeline", "make_pipeline"]


def make_pipeline(kind: str, settings: Settings) -> Pipeline:
    if kind == "generate":
        from workers.pipelines.generate import GeneratePipeline

        return GeneratePipeline(settings)
    if kind == "edit":
        from workers.pipelines.edit import EditPipeline

        return EditPipeline(settings)
    if kind == "video":
        from workers.pipelines.video import VideoPipeline

        return VideoPipeline(settings)
    if kind == "noop":
        from workers.pipelines.noop import NoopPipeline

        return NoopPipeline()
    raise KeyError(f"no pipeline for kind {kind!r}")
