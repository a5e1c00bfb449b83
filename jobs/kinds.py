"""The built-in job kinds, registered through the ``genfarm.kinds`` entry point group.

A kind says what a line makes; the parameters it takes come from the family of the line's
model (see ``jobs.registry``). No torch here.
"""

from __future__ import annotations

from jobs.registry import KindSpec

GENERATE = KindSpec("generate", "new images from a model (seed, size; prompt or camera)")
EDIT = KindSpec("edit", "edits of a generated or stored image (op: which edit)")
VIDEO = KindSpec("video", "MP4 videos (mode: orbit | interpolate | beats)", long=True)
NOOP = KindSpec("noop", "no model, a tiny output: smoke tests and overhead measurement")
AUDIO = KindSpec("audio", "audio structure: beats, bars, tempo map, sections, energy (JSON)")

# Fields every manifest line may carry, whatever its kind.
COMMON_FIELDS = {"kind", "priority", "max_attempts", "count", "after"}
