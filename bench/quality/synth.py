"""Seeded synthetic multi-track songs: four stems (drums, bass, other, vocals) at 44.1 kHz stereo and their mix.

No published weights or datasets are reachable offline, so the quality gate trains a small separator on these.
Each seed gives a different song: tempo, key, progression, groove, melody, timbres, panning and stem gains are
all drawn from it, and the timeline starts at a random point in a bar so that crops are not bar-aligned.

    mix, stems = make_example(seed=7, seconds=4.0)   # mix [2, T], stems [4, 2, T] in SOURCES order
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float64]

SAMPLERATE = 44100
# HTDemucs' source order (that of the pretrained models); the trained model and the gate use this order.
SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")

TABLE_SIZE = 4096
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
# Progressions as scale degrees, one chord a bar.
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (0, 4, 5, 3), (5, 3, 0, 4), (0, 6, 5, 4), (0, 2, 3, 4))
# (F1, F2, F3) in Hz for a, e, i, o, u: what makes the voice a voice rather than another harmonic line.
VOWELS = ((800, 1200, 2500), (400, 2000, 2600), (300, 2300, 3000), (500, 900, 2400), (350, 800, 2300))


@dataclass(frozen=True)
class Song:
    """The musical frame every part follows."""

    n: int  # samples
    step: float  # seconds per sixteenth note
    offset: float  # the example starts this many seconds into the first bar
    key: int  # MIDI note of the tonic, in the bass octave
    scale: tuple[int, ...]
    progression: tuple[int, ...]

    @property
    def bars(self) -> int:
        return math.ceil((self.n / SAMPLERATE + self.offset) / (16 * self.step))

    def time(self, step_index: float) -> float:
        """Seconds from the example's start of a sixteenth-note index (negative before it)."""
        return step_index * self.step - self.offset

    def chord(self, bar: int) -> list[int]:
        """Semitones above the key of the triad for `bar` (root, third, fifth)."""
        degree = self.progression[bar % len(self.progression)]
        return [self.scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def midi_hz(note: float | Audio) -> float | Audio:
    return 440.0 * 2.0 ** ((np.asarray(note) - 69.0) / 12.0)


def wavetable(amps: list[float] | Audio) -> Audio:
    """One period of sum_k amps[k-1] sin(2 pi k x): band-limited oscillators at the cost of a table lookup."""
    x = np.arange(TABLE_SIZE) / TABLE_SIZE
    table = np.zeros(TABLE_SIZE)
    for k, amp in enumerate(amps, start=1):
        table += amp * np.sin(2 * np.pi * k * x)
    return table


def oscillate(table: Audio, cycles: Audio) -> Audio:
    """Read `table` at phase `cycles` (in periods) with linear interpolation."""
    pos = (cycles % 1.0) * TABLE_SIZE
    low = pos.astype(np.int64)
    frac = pos - low
    return table[low] * (1 - frac) + table[(low + 1) % TABLE_SIZE] * frac


def harmonics(f0: float, count: int, tilt: float, ceiling: float) -> list[float]:
    """Amplitudes 1/k^tilt of `count` harmonics, those above `ceiling` Hz dropped (no aliasing, bounded band)."""
    return [k**-tilt if k * f0 < ceiling else 0.0 for k in range(1, count + 1)]


def adsr(t: Audio, attack: float, decay: float, sustain: float, release: float, gate: float) -> Audio:
    """Envelope at note-local times `t` (s): attack, decay to `sustain` while held for `gate` s, then release."""

    def held(x: Audio) -> Audio:
        return np.where(
            x < attack, x / max(attack, 1e-6), sustain + (1 - sustain) * np.exp(-(x - attack) / max(decay, 1e-6))
        )

    released = held(np.array([gate])) * np.exp(-(t - gate) / max(release, 1e-6))
    return np.where(t < gate, held(t), released)


def visible(n: int, start: float, seconds: float) -> tuple[int, Audio]:
    """A note from `start` lasting `seconds`, in an `n`-sample example: the first example sample it covers
    and the note-local times (s) of the covered samples. Rendering only those keeps short crops cheap."""
    begin = round(start * SAMPLERATE)
    low, high = max(begin, 0), min(begin + round(seconds * SAMPLERATE), n)
    return low, (np.arange(low, max(low, high)) - begin) / SAMPLERATE


def fft_filter(x: Audio, response: Callable[[Audio], Audio]) -> Audio:
    """Zero-phase filtering by a magnitude response of frequency in Hz (cheap, and no IIR loop in Python)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / SAMPLERATE)
    return np.fft.irfft(spectrum * response(freqs), n=x.shape[-1])


def highpass(cutoff: float, order: int = 8) -> Callable[[Audio], Audio]:
    return lambda f: 1.0 / np.sqrt(1.0 + (cutoff / np.maximum(f, 1e-3)) ** (2 * order))


def bandpass(low: float, high: float, order: int = 4) -> Callable[[Audio], Audio]:
    return lambda f: highpass(low, order)(f) / np.sqrt(1.0 + (f / high) ** (2 * order))


def formants(freqs: tuple[float, ...], widths: tuple[float, ...], gains: tuple[float, ...]) -> Callable[[Audio], Audio]:
    """Sum of resonances (Lorentzian magnitude) plus a small floor: a vowel's spectral envelope."""

    def response(f: Audio) -> Audio:
        out = np.full_like(f, 0.02)
        for centre, width, gain in zip(freqs, widths, gains, strict=True):
            out += gain / np.sqrt(1.0 + ((f - centre) / (width / 2)) ** 2)
        return out

    return response


def pan(mono: Audio, position: float) -> Audio:
    """Constant-power pan, position in [-1, 1] (left to right) -> [2, n]."""
    angle = (position + 1) * np.pi / 4
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono])


def place(out: Audio, start: float, signal: Audio) -> None:
    """Add `signal` ([..., m]) into `out` ([..., n]) at `start` seconds, cropping what falls outside."""
    begin = round(start * SAMPLERATE)
    src0, dst0 = max(0, -begin), max(0, begin)
    count = min(signal.shape[-1] - src0, out.shape[-1] - dst0)
    if count > 0:
        out[..., dst0 : dst0 + count] += signal[..., src0 : src0 + count]


# --- drums -----------------------------------------------------------------------------------------------


def kick(rng: np.random.Generator) -> Audio:
    """A sine swept down from 120-200 Hz to 45-60 Hz with a fast decay."""
    t = np.arange(int(0.4 * SAMPLERATE)) / SAMPLERATE
    low, high = rng.uniform(45, 60), rng.uniform(120, 200)
    freq = low + (high - low) * np.exp(-t / rng.uniform(0.02, 0.05))
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLERATE) * np.exp(-t / rng.uniform(0.08, 0.18))


def snare(rng: np.random.Generator) -> Audio:
    """A short 160-240 Hz tone plus band-passed noise, the noise decaying slower."""
    t = np.arange(int(0.3 * SAMPLERATE)) / SAMPLERATE
    tone = np.sin(2 * np.pi * rng.uniform(160, 240) * t) * np.exp(-t / rng.uniform(0.03, 0.06))
    noise = fft_filter(rng.standard_normal(t.size), bandpass(1000, 9000)) * np.exp(-t / rng.uniform(0.06, 0.12))
    return 0.6 * tone + noise / (np.abs(noise).max() + 1e-9)


def hat(rng: np.random.Generator, open_hat: bool) -> Audio:
    """Noise high-passed at 6-9 kHz; an open hat rings longer."""
    t = np.arange(int((0.3 if open_hat else 0.1) * SAMPLERATE)) / SAMPLERATE
    decay = rng.uniform(0.08, 0.15) if open_hat else rng.uniform(0.012, 0.04)
    noise = fft_filter(rng.standard_normal(t.size), highpass(rng.uniform(6000, 9000)))
    return noise / (np.abs(noise).max() + 1e-9) * np.exp(-t / decay)


def groove(rng: np.random.Generator) -> dict[str, list[tuple[int, float]]]:
    """One bar of (sixteenth index, velocity) per drum: backbeat snare, kicks on 1 and 3 plus random eighths."""
    kicks = [(0, 1.0), (8, 0.95)] + [(s, rng.uniform(0.6, 0.9)) for s in (2, 6, 10, 14) if rng.random() < 0.3]
    snares = [(4, 1.0), (12, 1.0)] + [(s, rng.uniform(0.2, 0.4)) for s in (7, 15) if rng.random() < 0.2]
    every = 1 if rng.random() < 0.4 else 2
    hats = [(s, rng.uniform(0.4, 1.0)) for s in range(0, 16, every)]
    return {"kick": kicks, "snare": snares, "hat": hats}


def drums(rng: np.random.Generator, song: Song) -> Audio:
    sounds = {"kick": kick(rng), "snare": snare(rng)}
    pans = {"kick": 0.0, "snare": rng.uniform(-0.1, 0.1), "hat": rng.uniform(-0.4, 0.4)}
    gains = {"kick": 1.0, "snare": rng.uniform(0.5, 0.8), "hat": rng.uniform(0.15, 0.35)}
    pattern = groove(rng)
    out = np.zeros((2, song.n))
    for bar in range(song.bars):
        for name, hits in pattern.items():
            for step, velocity in hits:
                sound = hat(rng, open_hat=step % 8 == 6 and rng.random() < 0.3) if name == "hat" else sounds[name]
                jitter = rng.normal(0, 0.004)  # a human drummer is not on the grid
                place(out, song.time(16 * bar + step) + jitter, pan(gains[name] * velocity * sound, pans[name]))
    return out


# --- bass ------------------------------------------------------------------------------------------------


def bass(rng: np.random.Generator, song: Song) -> Audio:
    """Eighth-note lines on the chord roots (sometimes the fifth or the octave), fundamentals 41-147 Hz."""
    tilt, brightness = rng.uniform(1.2, 2.0), rng.uniform(0.3, 1.0)
    amps = [a * (brightness if k > 1 else 1.0) for k, a in enumerate(harmonics(1.0, 8, tilt, 1e9), start=1)]
    table = wavetable(amps)
    attack, decay, sustain = rng.uniform(0.004, 0.015), rng.uniform(0.08, 0.3), rng.uniform(0.4, 0.8)
    out = np.zeros(song.n)
    for bar in range(song.bars):
        root = song.key + song.chord(bar)[0]
        for eighth in range(8):
            if rng.random() < 0.25 and eighth:
                continue  # rests give the line its rhythm
            note = root + int(rng.choice([0, 0, 0, 7, 12]))
            while midi_hz(note) > 150:
                note -= 12
            length = 2 * song.step
            first, t = visible(song.n, song.time(16 * bar + 2 * eighth), length + 0.1)
            env = adsr(t, attack, decay, sustain, rng.uniform(0.03, 0.08), 0.9 * length)
            wave = oscillate(table, float(midi_hz(note)) * t + rng.random())
            out[first : first + t.size] += rng.uniform(0.7, 1.0) * env * wave
    return pan(out, rng.uniform(-0.1, 0.1))


# --- other (chords) --------------------------------------------------------------------------------------


def voicing(song: Song, bar: int, rng: np.random.Generator) -> list[int]:
    """The bar's triad (plus sometimes the octave) as MIDI notes between C3 and A4: pads sit mostly below the
    voice, as in most arrangements, which keeps the two harmonic parts separable by a small model."""
    notes = []
    for interval in song.chord(bar) + ([song.chord(bar)[0] + 12] if rng.random() < 0.5 else []):
        note = song.key + interval
        while note < 48:
            note += 12
        while note > 69:
            note -= 12
        notes.append(note)
    return notes


def chords(rng: np.random.Generator, song: Song) -> Audio:
    """Pads or stabs of 2-3 detuned saws (or soft sines) per chord note, spread across the stereo field."""
    saw = rng.random() < 0.65
    tables: dict[int, Audio] = {}  # built on first use: a table costs 24 x 4096 sines
    detune = rng.uniform(4, 15)  # cents
    stabs = rng.random() < 0.35
    attack = rng.uniform(0.005, 0.03) if stabs else rng.uniform(0.05, 0.3)
    out = np.zeros((2, song.n))
    bar_len = 16 * song.step
    for bar in range(song.bars):
        hits = [(s, 2 * song.step) for s in range(0, 16, 4) if rng.random() < 0.8] if stabs else [(0, bar_len)]
        for note_index, note in enumerate(voicing(song, bar, rng)):
            for step, length in hits:
                first, t = visible(song.n, song.time(16 * bar + step), length + 0.3)
                env = adsr(t, attack, 0.3, rng.uniform(0.5, 0.9), 0.2, 0.95 * length)
                if note not in tables:
                    tables[note] = wavetable(harmonics(float(midi_hz(note)), 24, 1.0 if saw else 2.5, 8000))
                voice = np.zeros(t.size)
                for cents in rng.uniform(-detune, detune, size=int(rng.integers(2, 4))):
                    voice += oscillate(tables[note], float(midi_hz(note + cents / 100)) * t + rng.random())
                position = np.clip(0.5 * (note_index - 1.5) + rng.normal(0, 0.1), -0.9, 0.9)
                out[:, first : first + t.size] += pan(env * voice, position)
    return out


# --- vocals ----------------------------------------------------------------------------------------------

CONTROL_HOP = 64  # pitch is computed at sr / 64 and interpolated: smoothing per sample is needlessly costly


def melody(rng: np.random.Generator, song: Song) -> list[tuple[float, float, int]]:
    """Notes (start s, length s, MIDI) of a stepwise melody in the key, C4-G5, in 2-8 sixteenth syllables."""
    degree, step_index, notes = int(rng.integers(7, 11)), 0, []
    total = 16 * song.bars
    while step_index < total:
        length = int(rng.choice([2, 2, 3, 4, 4, 6, 8]))
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), 5, 13))
        note = song.key + 12 + song.scale[degree % 7] + 12 * (degree // 7)
        while note < 60:
            note += 12
        while note > 79:
            note -= 12
        notes.append((song.time(step_index), length * song.step, note))
        step_index += length
    return notes


def pitch_curve(rng: np.random.Generator, song: Song, notes: list[tuple[float, float, int]]) -> Audio:
    """Per-sample MIDI pitch: notes joined by glides, vibrato growing after each onset, a little drift."""
    frames = song.n // CONTROL_HOP + 2
    t = np.arange(frames) * CONTROL_HOP / SAMPLERATE
    target = np.full(frames, float(notes[0][2]))
    since_onset = np.zeros(frames)
    for start, _, note in notes:
        after = t >= start
        target[after] = note
        since_onset[after] = t[after] - start
    glide = max(1, int(rng.uniform(0.03, 0.09) * SAMPLERATE / CONTROL_HOP))
    padded = np.concatenate([np.full(glide, target[0]), target])
    smooth = np.convolve(padded, np.ones(glide) / glide, mode="full")[glide : glide + frames]
    rate, depth = rng.uniform(4.5, 6.5), rng.uniform(0.2, 0.6)
    vibrato = depth * np.clip((since_onset - 0.1) / 0.3, 0, 1) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3))
    drift = 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t)
    return np.interp(np.arange(song.n), np.arange(frames) * CONTROL_HOP, smooth + vibrato + drift)


def vocals(rng: np.random.Generator, song: Song) -> Audio:
    """A glottal-like harmonic source on the pitch curve; each note a syllable with its own vowel formants."""
    notes = melody(rng, song)
    pitch = pitch_curve(rng, song, notes)
    top = float(midi_hz(pitch.max()))
    source = oscillate(wavetable(harmonics(top, 40, 1.0, 5000)), np.cumsum(midi_hz(pitch)) / SAMPLERATE)
    scale = rng.uniform(0.9, 1.15)  # a different speaker shifts all formants together
    widths, gains = (rng.uniform(70, 110), rng.uniform(90, 130), rng.uniform(110, 160)), (1.0, 0.6, 0.35)
    out = np.zeros(song.n)
    for start, length, _ in notes:
        if rng.random() < 0.12:
            continue  # a breath
        first, t = visible(song.n, start, length)
        if t.size == 0:
            continue
        vowel = tuple(f * scale for f in VOWELS[int(rng.integers(len(VOWELS)))])
        env = adsr(t, rng.uniform(0.015, 0.04), 0.2, 0.8, rng.uniform(0.02, 0.05), 0.85 * length)
        segment = source[first : first + t.size] * env
        out[first : first + t.size] += fft_filter(segment, formants(vowel, widths, gains))
    return pan(out, rng.uniform(-0.15, 0.15))


# --- the example ---------------------------------------------------------------------------------------


def song_frame(rng: np.random.Generator, seconds: float) -> Song:
    step = 60.0 / rng.uniform(85, 140) / 4
    return Song(
        n=round(seconds * SAMPLERATE),
        step=step,
        offset=rng.uniform(0, 16 * step),
        key=int(rng.integers(28, 40)),
        scale=MAJOR if rng.random() < 0.5 else MINOR,
        progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
    )


def mix_stems(rng: np.random.Generator, parts: list[Audio]) -> Audio:
    """Each part at unit RMS times a random gain (-6..0 dB), the whole scaled so the mix peaks at 0.5-0.9."""
    stems = np.stack([p / (np.sqrt(np.mean(p**2)) + 1e-9) * 10 ** (rng.uniform(-6, 0) / 20) for p in parts])
    peak = np.abs(stems.sum(axis=0)).max() + 1e-9
    return stems * rng.uniform(0.5, 0.9) / peak


def make_example(seed: int, seconds: float = 4.0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(mix [2, T], stems [4, 2, T]) float32 at 44.1 kHz, stems in SOURCES order; mix == stems.sum(0)."""
    rng = np.random.default_rng(seed)
    song = song_frame(rng, seconds)
    # One child generator per part: changing one part's code does not reshuffle the others' draws.
    part_rngs = rng.spawn(4)
    renderers = {"drums": drums, "bass": bass, "other": chords, "vocals": vocals}
    parts = [renderers[name](part_rng, song) for name, part_rng in zip(SOURCES, part_rngs, strict=True)]
    stems = mix_stems(rng, parts).astype(np.float32)
    return stems.sum(axis=0), stems
