"""The built-in ``audio`` family: musical structure of a track (beats, downbeats, bars, a tempo
map, labelled sections, an energy curve) as ``structure.json``; no model, no device. A beats
video can take that structure instead of analysing its audio again (``StructureRef``).
Torch-free: the worker side is ``workers.families.audio``, the analysis ``workers.audio``."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from jobs.registry import AudioRef, FamilySpec, JobOutputRef, Params

STRUCTURE = "structure.json"  # the job's one output


class StructureRef(JobOutputRef):
    """The structure.json of an audio job: ``{"line": N}`` of this manifest (the job waits for
    it) or ``{"job": ID}`` of a succeeded one."""

    of_kind = "audio"
    output = STRUCTURE


class Analyse(Params):
    """Analyse an audio file: beats, downbeats and bars, a tempo map, sections labelled by
    similarity (A B A ...), an energy curve; one structure.json."""

    model: str = Field(description="The model (see `genfarm models`).")
    audio: AudioRef = Field(description="An audio file in storage (WAV, MP3, Ogg, FLAC, M4A).")
    meter: int = Field(4, ge=1, le=12, description="Beats per bar (4: 4/4, 3: 3/4 ...).")


def batch_key(kind: str, params: Any) -> str:
    return f"{kind}:{params['model']}"


SPEC = FamilySpec(
    name="audio",
    summary="musical structure of a track: beats, bars, tempo map, sections, energy (JSON)",
    kinds={"audio": Analyse},
    worker="workers.families.audio:AudioFamily",
    weights="none",
    batch_key=batch_key,
    unit_seconds=2.5,  # benchmarks/audio.py: 0.66 s a minute of music on 2 CPU cores; 3-4 min
    uses_device=False,
    requires=("librosa", "scipy", "numpy", "av"),
    install_hint="pip install 'genfarm[worker]'",
)
