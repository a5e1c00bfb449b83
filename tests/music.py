"""A synthesizer of test music whose structure is known exactly: a 4/4 beat grid (a kick on
beat 1, lighter clicks on 2 to 4), one tempo change, and sections of distinct timbre (A: a low
sine pad, B: a bright sawtooth and noise, C: a high square-wave organ), e.g. A B A. ``synth`` returns the WAV and its truth,
so tests and benchmarks measure the audio analysis against it."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RATE = 22050


@dataclass(frozen=True)
class Track:
    """A synthesized track and its ground truth (seconds)."""

    wav: bytes
    samples: np.ndarray  # mono float32 in [-1, 1]
    rate: int
    duration: float
    beats: list[float]
    downbeats: list[float]
    bars: list[tuple[float, float]]  # (start, end) of each bar
    tempo_change: float  # the first beat at the second tempo
    bpm: tuple[float, float]  # before and after the change
    sections: list[dict[str, Any]] = field(default_factory=list)  # start, end, label, bars

    def boundaries(self) -> list[float]:
        """The times where one section ends and the next begins."""
        return [s["start"] for s in self.sections[1:]]


def synth(form: str = "ABA", bars: int | list[int] = 8, bpm: float = 120.0,
          change_bpm: float = 150.0, change_bar: int | None = None, start: float = 0.25,
          tail: float = 1.0, seed: int = 0, offbeats: float = 0.0, noise: float = 0.0,
          rate: int = RATE) -> Track:
    """A track of sections ``form`` (one letter each, e.g. "ABA"), each ``bars`` bars of 4/4
    (or a list of bar counts), at ``bpm`` until bar ``change_bar`` (default: halfway through
    the second section, or the only one), ``change_bpm`` from there. The first beat falls at
    ``start`` s.
    Harder variants: ``offbeats`` adds clicks of that level halfway between beats (eighth
    notes, which a tracker may take for beats), ``noise`` a floor of white noise."""
    counts = [bars] * len(form) if isinstance(bars, int) else list(bars)
    if len(counts) != len(form):
        raise ValueError("give one bar count per section letter")
    total_bars = sum(counts)
    if change_bar is None:  # halfway through the second section (or the only one)
        change_bar = counts[0] + counts[1] // 2 if len(counts) > 1 else counts[0] // 2
    if not 0 < change_bar < total_bars:
        raise ValueError(f"change_bar: the change falls inside the track's {total_bars} bars")
    rng = np.random.default_rng(seed)
    # the beat grid: 4 beats a bar, the tempo changes at the first beat of ``change_bar``
    beats, t = [], start
    for bar in range(total_bars):
        for _ in range(4):
            beats.append(t)
            t += 60.0 / (bpm if bar < change_bar else change_bpm)
    end_of_grid = t
    duration = end_of_grid + tail
    n = int(round(duration * rate))
    out = np.zeros(n, dtype=np.float64)
    timbres = {letter: _timbre(letter, rng) for letter in dict.fromkeys(form)}
    # sections: the letter's pad over its bars
    sections, bar = [], 0
    for letter, count in zip(form, counts, strict=True):
        s0 = beats[bar * 4]
        s1 = beats[(bar + count) * 4] if bar + count < total_bars else end_of_grid
        sections.append({"start": s0, "end": s1, "label": letter, "bars": (bar, bar + count)})
        for b in range(bar, bar + count):
            b0 = beats[b * 4]
            b1 = beats[b * 4 + 4] if b + 1 < total_bars else end_of_grid
            _pad(out, rate, b0, b1, timbres[letter], b - bar)
        bar += count
    # drums: a kick on 1, a click on every beat (lighter on 2 to 4)
    for i, beat in enumerate(beats):
        if i % 4 == 0:
            _kick(out, rate, beat)
        _click(out, rate, beat, 0.5 if i % 4 == 0 else 0.3, rng)
        if offbeats and i + 1 < len(beats):
            _click(out, rate, (beat + beats[i + 1]) / 2, offbeats, rng)
    if noise:
        out += noise * rng.standard_normal(n)
    out = 0.8 * out / max(1e-9, float(np.abs(out).max()))
    samples = out.astype(np.float32)
    downbeats = beats[::4]
    bar_spans = [(downbeats[i], downbeats[i + 1] if i + 1 < len(downbeats) else end_of_grid)
                 for i in range(len(downbeats))]
    return Track(wav=to_wav(samples, rate), samples=samples, rate=rate, duration=n / rate,
                 beats=beats, downbeats=downbeats, bars=bar_spans,
                 tempo_change=beats[change_bar * 4], bpm=(bpm, change_bpm), sections=sections)


TIMBRES = {  # per section letter: wave, root (Hz), noise level, loudness
    "A": ("sine", 110.0, 0.0, 0.5),  # a low, soft pad
    "B": ("saw", 330.0, 0.25, 0.35),  # a bright sawtooth with noise
    "C": ("square", 523.0, 0.0, 0.3),  # a high, hollow organ
}


def _timbre(letter: str, rng: np.random.Generator) -> dict[str, Any]:
    """The section's sound (``TIMBRES``); the seed moves its root a little."""
    if letter not in TIMBRES:
        raise ValueError(f"section letters are {', '.join(TIMBRES)}, got {letter!r}")
    wave, root, noise, level = TIMBRES[letter]
    return {"wave": wave, "root": root * float(rng.uniform(0.94, 1.06)), "noise": noise,
            "level": level}


CHORDS = ((1.0, 1.25, 1.5), (0.89, 1.12, 1.33), (0.84, 1.0, 1.26), (0.75, 0.94, 1.12))


def _pad(out: np.ndarray, rate: int, t0: float, t1: float, timbre: dict[str, Any],
         bar: int) -> None:
    """One bar of the section's pad: a chord (changing bar by bar) with soft edges."""
    a, b = int(t0 * rate), min(len(out), int(t1 * rate))
    t = np.arange(b - a) / rate
    chord = CHORDS[bar % len(CHORDS)]
    tone = np.zeros_like(t)
    for ratio in chord:
        f = timbre["root"] * ratio
        if timbre["wave"] == "sine":
            tone += np.sin(2 * np.pi * f * t)
        else:  # band-limited: 12 harmonics, all (sawtooth) or the odd ones (square)
            step = 1 if timbre["wave"] == "saw" else 2
            for k in range(1, 13, step):
                tone += np.sin(2 * np.pi * f * k * t) / k
    tone /= len(chord)
    if timbre["noise"]:
        tone += timbre["noise"] * np.random.default_rng(bar).standard_normal(len(t))
    edge = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02) if len(t) else t
    out[a:b] += timbre["level"] * tone * edge


def _kick(out: np.ndarray, rate: int, t0: float) -> None:
    """A bass drum: a sine falling from 120 to 50 Hz, decaying over about 0.2 s (faded out at
    0.4 s: a cut-off tone would click, an attack the analysis would rightly hear)."""
    a = int(round(t0 * rate))
    t = np.arange(min(int(0.4 * rate), len(out) - a)) / rate
    freq = 50 + 70 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    out[a : a + len(t)] += 1.6 * np.sin(phase) * np.exp(-t * 14) * np.minimum(1.0, (0.4 - t) / 0.05)


def _click(out: np.ndarray, rate: int, t0: float, level: float, rng: np.random.Generator) -> None:
    """A hi-hat-like click: 25 ms of high-passed noise with a sharp attack."""
    n = int(0.025 * rate)
    a = int(round(t0 * rate))
    noise = rng.standard_normal(min(n, len(out) - a))
    noise = np.diff(noise, prepend=0.0)  # first difference: a crude high-pass
    out[a : a + len(noise)] += level * noise * np.exp(-np.arange(len(noise)) / rate * 180)


def to_wav(samples: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM WAV of float samples in [-1, 1]."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()
