"""Musical structure of an audio track: beats, downbeats and bars, a tempo map, sections with
labels that repeat when the music repeats, and an energy curve, as one JSON-ready dict.

Torch-free (numpy, scipy, librosa, imported lazily so the module itself imports in the CLI).
The steps, each a small function below:

1. a log-mel spectrogram (hop 11.6 ms) and its spectral flux (the onset envelope); a finer flux
   (hop 2.9 ms) to place each beat on its attack;
2. a time-varying tempo: the tempogram's (6 s windows) best lag per moment with a log-normal
   prior around 120 bpm, chosen by a Viterbi path that pays for every change, so a tempo
   change is one clean step, not a drift;
3. beats by dynamic programming (Ellis 2007) against that local beat period (within 3 s of a
   tempo change, any interval between the two periods is free: the onsets place the change),
   then each moved onto the attack nearest it;
4. the tempo map: the log beat intervals cut into constant pieces (binary segmentation on
   medians, so one missed beat does not make a tempo change);
5. downbeats: the bar phase (``meter`` beats a bar) whose beats carry the most low-frequency
   accent (kick drums) and harmonic change, a Viterbi over the phase allowing rare re-phasing;
6. sections: per-bar features of timbre (MFCC), colour (flatness, centroid) and harmony
   (chroma); a boundary on a bar start where the 4 bars before and the 4 after differ by
   several times their spread within (a two-sample statistic: chords changing bar by bar
   inside a section add spread, not difference); labels by clustering the sections' means,
   so sections that sound alike share one.

Known limits (measured with tests/music.py, see docs/music-video.md): above about 170 bpm the
prior prefers half the tempo; eighth notes as loud as the beats can pull the grid onto them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

VERSION = 1
SR = 22050  # analysis rate: every input is resampled to it
HOP = 256  # 11.6 ms: tempo, beats, features
N_FFT = 1024
FINE_HOP = 64  # 2.9 ms: beats onto their attacks
FINE_N_FFT = 512
# a log-spectral flux peaks as an attack enters the analysis window, about a third of a window
# before the attack (measured on synthetic clicks and kicks: 16 ms at 1024, 8 ms at 512)
LATENCY = 0.36
BPM_RANGE = (50.0, 220.0)
TEMPO_PRIOR = 120.0  # log-normal prior on the tempo, one octave wide (as librosa's)
TIGHTNESS = 100.0  # beat DP: how strongly intervals keep to the local period
SNAP_S = 0.035  # how far a beat may move onto an attack
MIN_TEMPO_BEATS = 4  # a tempo piece spans at least this many beat intervals
TEMPO_STEP = math.log(1.04)  # pieces whose median tempi differ by less than 4% are one
NOVELTY_BARS = 4  # bars on each side of a candidate section boundary
MIN_SECTION_BARS = 2  # the first and last sections too (a last bar that runs into silence)
BOUNDARY = 3.5  # a boundary: the bars before and after differ by this many spreads
FEATURE_WEIGHTS = {"mfcc": 1.0, "colour": 1.0, "chroma": 0.3}  # in the section features
SAME_SECTION = 2.0  # sections whose means lie within this many bar scatters share a label
ENERGY_HOP_FRAMES = 8  # the energy curve's hop: 8 x 11.6 ms = 93 ms


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate, from any audio file FFmpeg reads; a file it cannot
    read is the job's permanent error."""
    import io

    import av

    from workers.family import PermanentError

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            rate = stream.rate or 44100
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [r.to_ndarray().reshape(-1) for f in container.decode(stream)
                      for r in resampler.resample(f)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise PermanentError(f"the audio file cannot be decoded: {exc}") from exc
    if not chunks:
        raise PermanentError("the audio file holds no samples")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def analyse(samples: np.ndarray, rate: int, meter: int = 4) -> dict[str, Any]:
    """The structure of a mono track (float samples at ``rate`` Hz), in seconds::

        {"version": 1, "duration", "rate", "beats", "downbeats", "meter", "bars": [{start,
         end}], "tempo": [{start, bpm}], "sections": [{start, end, label}],
         "energy": {"hop", "values"}}

    Deterministic: the same samples give the same dict."""
    import librosa

    if meter < 1:
        raise ValueError("meter: expected a positive number of beats per bar")
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    duration = len(samples) / float(rate)
    y = samples if rate == SR else librosa.resample(samples, orig_sr=rate, target_sr=SR)
    y = np.nan_to_num(y.astype(np.float64))
    if len(y) < N_FFT:  # shorter than one analysis window: silence after it
        y = np.pad(y, (0, N_FFT - len(y)))
    front = _front_end(y)
    if not np.any(front["onset"] > 0):
        beats: np.ndarray = np.zeros(0)
    else:
        bpm = local_tempo(front["onset"])
        beats = track_beats(front["onset"], bpm)
        beats = snap_to_attacks(beats, _fine_onset(y))
    beats = beats[(beats >= 0) & (beats < duration)]
    downbeats = choose_downbeats(beats, _beat_accent(beats, front), meter)
    bars = _bars(beats, downbeats, meter, duration)
    return {
        "version": VERSION,
        "duration": round(duration, 4),
        "rate": int(rate),
        "beats": _rounded(beats),
        "downbeats": _rounded(downbeats),
        "meter": meter,
        "bars": [{"start": round(a, 4), "end": round(b, 4)} for a, b in bars],
        "tempo": tempo_map(beats),
        "sections": sections(bars, front, duration),
        "energy": energy_curve(front["rms"]),
    }


# -- the front end ------------------------------------------------------------------------
def _frame_times(n: int, hop: int = HOP, n_fft: int = N_FFT) -> np.ndarray:
    """The time each frame's flux stands for: its centre, plus the window's latency."""
    return np.arange(n) * hop / SR + LATENCY * n_fft / SR


def _flux(log_mel: np.ndarray) -> np.ndarray:
    """Spectral flux: the summed rise of each band since the frame before."""
    rise = np.maximum(0.0, np.diff(log_mel, axis=1)).sum(axis=0)
    return np.concatenate([[0.0], rise])


def _front_end(y: np.ndarray) -> dict[str, np.ndarray]:
    import librosa

    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=SR, n_mels=64, fmax=SR / 2)
    log_mel = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    low = librosa.mel_frequencies(n_mels=64, fmax=SR / 2) < 200.0  # kick drums, bass
    chroma = librosa.feature.chroma_stft(S=power, sr=SR, tuning=0.0)  # A440: no guessing
    magnitude = np.sqrt(power)
    colour = np.vstack([  # noisy against tonal, dark against bright
        np.log(librosa.feature.spectral_flatness(S=magnitude) + 1e-6),
        np.log(librosa.feature.spectral_centroid(S=magnitude, sr=SR) + 1.0)])
    return {
        "onset": _flux(log_mel),
        "low": _flux(log_mel[low]),
        "mfcc": librosa.feature.mfcc(S=log_mel, n_mfcc=13)[1:],  # 0: loudness, not timbre
        "chroma": chroma,
        "colour": colour,
        "rms": np.sqrt(power.sum(axis=0) / (N_FFT / 2)),
    }


def _fine_onset(y: np.ndarray) -> np.ndarray:
    import librosa

    power = np.abs(librosa.stft(y, n_fft=FINE_N_FFT, hop_length=FINE_HOP)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=SR, n_mels=40, fmax=SR / 2)
    return _flux(librosa.power_to_db(mel, ref=np.max, top_db=80.0))


# -- tempo and beats ----------------------------------------------------------------------
def local_tempo(onset: np.ndarray, step: int = 4, change_cost: float = 2.0,
                win: int = 512) -> np.ndarray:
    """The tempo (bpm) at every frame: a Viterbi path through the tempogram (6 s windows)
    with a log-normal prior, paying ``change_cost`` plus the size of each change, evaluated
    every ``step`` frames and held in between."""
    import librosa

    tg = librosa.feature.tempogram(onset_envelope=onset, sr=SR, hop_length=HOP, win_length=win)
    bpms = librosa.tempo_frequencies(win, sr=SR, hop_length=HOP)
    keep = np.flatnonzero((bpms >= BPM_RANGE[0]) & (bpms <= BPM_RANGE[1]))
    bpms = bpms[keep]
    prior = -0.5 * (np.log2(bpms) - math.log2(TEMPO_PRIOR)) ** 2
    obs = (tg[keep, ::step] + 0.5 * prior[:, None]).T  # (time, tempo)
    logb = np.log(bpms)
    cost = change_cost * (logb[:, None] != logb[None, :]) + 10.0 * np.abs(
        logb[:, None] - logb[None, :])
    score = obs[0].copy()
    back = np.zeros(obs.shape, dtype=np.int64)
    for t in range(1, len(obs)):
        total = score[None, :] - cost  # [to, from]
        back[t] = np.argmax(total, axis=1)
        score = total[np.arange(len(bpms)), back[t]] + obs[t]
    path = np.zeros(len(obs), dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(len(obs) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return np.repeat(bpms[path], step)[: len(onset)]


def track_beats(onset: np.ndarray, bpm: np.ndarray, settle_s: float = 3.0) -> np.ndarray:
    """Beat times (s): the frames that best fit the onsets while their intervals keep to the
    local beat period (dynamic programming, Ellis 2007), weak ones at the ends trimmed.

    Where the tempo changes, the tempogram cannot say exactly when (its windows are seconds
    long), so within ``settle_s`` of a change any interval between the two periods is free,
    and the onsets decide where the change falls."""
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    strength = onset / (onset.std() + 1e-9)
    period = 60.0 * SR / HOP / bpm  # frames per beat, per frame
    width = 2 * int(settle_s * SR / HOP) + 1
    shortest = np.log(minimum_filter1d(period, width, mode="nearest"))
    longest = np.log(maximum_filter1d(period, width, mode="nearest"))
    n = len(strength)
    score = strength.copy()
    back = np.full(n, -1)
    for t in range(n):
        p = period[t]
        lo, hi = int(round(t - 2 * np.exp(longest[t]))), int(round(t - np.exp(shortest[t]) / 2))
        if hi < 0:
            continue
        taus = np.arange(max(0, lo), hi + 1)
        gap = np.log(t - taus)
        off = np.maximum(0.0, np.maximum(shortest[t] - gap, gap - longest[t]))
        cand = score[taus] - TIGHTNESS * (off ** 2 + 0.1 * (gap - math.log(p)) ** 2)
        best = int(np.argmax(cand))
        if cand[best] > 0:  # else a chain starts here (the first beat after silence)
            score[t] = strength[t] + cand[best]
            back[t] = taus[best]
    last_p = int(round(period[-1]))
    t = n - last_p + int(np.argmax(score[n - last_p:])) if n > last_p else int(np.argmax(score))
    chain = []
    while t >= 0:
        chain.append(t)
        t = int(back[t])
    frames = _trim(np.asarray(chain[::-1], dtype=np.int64), strength)
    return _frame_times(len(strength))[frames] if len(frames) else np.zeros(0)


def _trim(frames: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Drop leading and trailing beats with next to no onset at them (the silence before and
    after the music: the DP fills it with beats too). Quiet passages keep theirs: a beat stays
    when its onset is a tenth of the median beat's."""
    if len(frames) == 0:
        return frames
    local = np.array([strength[max(0, f - 2): f + 3].max() for f in frames])
    strong = np.flatnonzero(local >= 0.1 * float(np.median(local)))
    return frames[strong[0]: strong[-1] + 1] if len(strong) else frames[:0]


def snap_to_attacks(beats: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Move each beat onto the strongest attack of the fine flux within ``SNAP_S``, where that
    attack stands out (twice the flux's median over the 0.2 s around it); else leave it."""
    times = _frame_times(len(fine), FINE_HOP, FINE_N_FFT)
    out = beats.copy()
    for j, b in enumerate(beats):
        window = np.flatnonzero(np.abs(times - b) <= SNAP_S)
        around = np.flatnonzero(np.abs(times - b) <= 0.1)
        if len(window) == 0:
            continue
        i = int(window[np.argmax(fine[window])])
        if fine[i] >= 2.0 * float(np.median(fine[around])):
            out[j] = times[i]
    return out


def tempo_map(beats: np.ndarray) -> list[dict[str, float]]:
    """One entry per stretch of constant tempo: where it starts (a beat; the first at 0) and
    its bpm (from the median beat interval)."""
    if len(beats) < 2:
        return []
    log_ibi = np.log(np.diff(beats))
    cuts = sorted(_split(log_ibi, 0, len(log_ibi)))
    bounds = [0, *cuts, len(log_ibi)]
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        bpm = 60.0 / math.exp(float(np.median(log_ibi[a:b])))
        out.append({"start": 0.0 if a == 0 else round(float(beats[a]), 4), "bpm": round(bpm, 2)})
    return out


def _split(x: np.ndarray, lo: int, hi: int) -> list[int]:
    """Binary segmentation of ``x[lo:hi]`` into pieces of different medians (L1 cost)."""
    m = MIN_TEMPO_BEATS
    if hi - lo < 2 * m:
        return []
    whole = float(np.abs(x[lo:hi] - np.median(x[lo:hi])).sum())
    best, at = whole, -1
    for k in range(lo + m, hi - m + 1):
        left, right = x[lo:k], x[k:hi]
        ml, mr = float(np.median(left)), float(np.median(right))
        if abs(ml - mr) < TEMPO_STEP:
            continue
        cost = float(np.abs(left - ml).sum() + np.abs(right - mr).sum())
        if cost < best:
            best, at = cost, k
    if at < 0:
        return []
    return [*_split(x, lo, at), at, *_split(x, at, hi)]


# -- bars ---------------------------------------------------------------------------------
def _beat_accent(beats: np.ndarray, front: dict[str, np.ndarray]) -> np.ndarray:
    """How much each beat sounds like the first of a bar: the low-band attack at it (kick,
    bass) plus how much the harmony changes there (chords change on downbeats)."""
    if len(beats) == 0:
        return np.zeros(0)
    times = _frame_times(len(front["low"]))
    frames = np.clip(np.searchsorted(times, beats), 0, len(times) - 1)
    low = np.array([front["low"][max(0, f - 2): f + 3].max() for f in frames])
    chroma = front["chroma"]
    edges = np.concatenate([frames, [chroma.shape[1]]])
    beat_chroma = np.stack([chroma[:, a: max(a + 1, b)].mean(axis=1)
                            for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    change = np.concatenate([[0.0], np.abs(np.diff(beat_chroma, axis=1)).sum(axis=0)])
    return _z(low) + 0.5 * _z(change)


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def choose_downbeats(beats: np.ndarray, accent: np.ndarray, meter: int,
                     rephase_cost: float = 4.0) -> np.ndarray:
    """The beats that start bars: a Viterbi path over each beat's place in the bar (0 ..
    meter-1), which moves on by one each beat or re-phases at ``rephase_cost``; a beat at place 0
    scores its accent."""
    if len(beats) == 0 or meter == 1:
        return beats.copy()
    n, m = len(beats), meter
    score = np.where(np.arange(m) == 0, accent[0], 0.0)
    back = np.zeros((n, m), dtype=np.int64)
    for i in range(1, n):
        advance = np.roll(score, 1)  # place s comes from place s-1
        best = int(np.argmax(score))
        jump = score[best] - rephase_cost
        back[i] = np.where(advance >= jump, (np.arange(m) - 1) % m, best)
        score = np.maximum(advance, jump) + np.where(np.arange(m) == 0, accent[i], 0.0)
    place = np.zeros(n, dtype=np.int64)
    place[-1] = int(np.argmax(score))
    for i in range(n - 1, 0, -1):
        place[i - 1] = back[i, place[i]]
    return beats[place == 0]


def _bars(beats: np.ndarray, downbeats: np.ndarray, meter: int,
          duration: float) -> list[tuple[float, float]]:
    """(start, end) of each bar: downbeat to downbeat; the last lasts ``meter`` of the last
    beats' intervals (or to the end of the track)."""
    if len(downbeats) == 0:
        return []
    ibi = float(np.median(np.diff(beats[-meter - 1:]))) if len(beats) > 1 else duration
    ends = [*downbeats[1:], min(duration, downbeats[-1] + meter * ibi)]
    return [(float(a), float(b)) for a, b in zip(downbeats, ends, strict=True)]


# -- sections -----------------------------------------------------------------------------
def sections(bars: list[tuple[float, float]], front: dict[str, np.ndarray],
             duration: float) -> list[dict[str, Any]]:
    """Sections covering the whole track, their boundaries on bar starts, labelled A, B, ...
    in order of first appearance, a label shared by sections that sound alike."""
    if len(bars) < 2 * NOVELTY_BARS:
        return [{"start": 0.0, "end": round(duration, 4), "label": "A"}]
    features = _bar_features(bars, front)
    novelty = _novelty(features)
    near = NOVELTY_BARS // 2  # a peak is the highest this near: sections of 3+ bars
    starts = [b for b in range(MIN_SECTION_BARS, len(bars) - MIN_SECTION_BARS + 1)
              if novelty[b] >= BOUNDARY
              and novelty[b] == novelty[max(1, b - near): b + near + 1].max()]
    bounds = [0, *starts, len(bars)]
    parts = [features[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    means = np.stack([p.mean(axis=0) for p in parts])
    # how far a section's bars lie from its mean, typically: the unit of "sounds alike"
    within = float(np.median([math.sqrt(float(((p - p.mean(axis=0)) ** 2).sum(axis=1).mean()))
                              for p in parts]))
    labels = _cluster(means, SAME_SECTION * max(within, 1e-6))
    times = [0.0, *(bars[b][0] for b in starts), duration]
    return [{"start": round(a, 4), "end": round(b, 4), "label": label}
            for a, b, label in zip(times, times[1:], labels, strict=False)]


def _novelty(features: np.ndarray) -> np.ndarray:
    """Per bar, how unlike the ``NOVELTY_BARS`` bars before it are to those from it on: the
    distance of their means over their spread within (a two-sample t statistic). Chords that
    change bar by bar inside a section add spread, not distance."""
    w = NOVELTY_BARS
    floor = 0.25 * float(np.median(np.linalg.norm(np.diff(features, axis=0), axis=1))) + 1e-9
    out = np.zeros(len(features))
    for b in range(1, len(features)):
        before, after = features[max(0, b - w): b], features[b: b + w]
        scatter = sum(float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
                      for x in (before, after))
        spread = max(math.sqrt(scatter / min(len(before), len(after))), floor)
        out[b] = float(np.linalg.norm(before.mean(axis=0) - after.mean(axis=0))) / spread
    return out


def _bar_features(bars: list[tuple[float, float]], front: dict[str, np.ndarray]) -> np.ndarray:
    """Per bar: its mean timbre (MFCC), colour (flatness, centroid) and harmony (chroma), each
    dimension standardized over the track, each group weighted by ``FEATURE_WEIGHTS`` (chords
    change within sections too: harmony counts least)."""
    groups = [front[name] for name in FEATURE_WEIGHTS]
    times = np.arange(groups[0].shape[1]) * HOP / SR
    columns = []
    for group, weight in zip(groups, FEATURE_WEIGHTS.values(), strict=True):
        rows = []
        for a, b in bars:
            frames = np.flatnonzero((times >= a) & (times < b))
            if len(frames) == 0:
                frames = np.array([min(len(times) - 1, int(np.searchsorted(times, a)))])
            rows.append(group[:, frames].mean(axis=1))
        x = np.stack(rows)
        columns.append(weight * (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
                       / math.sqrt(x.shape[1]))
    return np.hstack(columns)


def _cluster(means: np.ndarray, threshold: float) -> list[str]:
    """Labels for section means: average-linkage clusters cut at ``threshold``, lettered by
    first appearance (A, B, ... Z, then A2, B2 ...)."""
    if len(means) == 1:
        return ["A"]
    from scipy.cluster.hierarchy import fcluster, linkage

    ids = fcluster(linkage(means, method="average"), t=threshold, criterion="distance")
    order: dict[int, int] = {}
    for i in ids:
        order.setdefault(int(i), len(order))
    return [_letter(order[int(i)]) for i in ids]


def _letter(i: int) -> str:
    return chr(ord("A") + i % 26) + (str(i // 26 + 1) if i >= 26 else "")


# -- energy -------------------------------------------------------------------------------
def energy_curve(rms: np.ndarray) -> dict[str, Any]:
    """Loudness over time in [0, 1]: RMS in dB, smoothed over half a second, 0 at 40 dB below
    the loudest moment; one value every ``ENERGY_HOP_FRAMES`` frames."""
    if len(rms) == 0:
        return {"hop": round(ENERGY_HOP_FRAMES * HOP / SR, 5), "values": []}
    from scipy.ndimage import uniform_filter1d

    db = 20 * np.log10(np.maximum(rms, 1e-9))
    smooth = uniform_filter1d(db, max(1, int(round(0.5 * SR / HOP))), mode="nearest")
    smooth = smooth[::ENERGY_HOP_FRAMES]
    values = np.clip((smooth - (smooth.max() - 40.0)) / 40.0, 0.0, 1.0)
    return {"hop": round(ENERGY_HOP_FRAMES * HOP / SR, 5),
            "values": [round(float(v), 3) for v in values]}


def _rounded(times: np.ndarray) -> list[float]:
    return [round(float(t), 4) for t in times]
