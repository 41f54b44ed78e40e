"""VGGish input: log-mel examples exactly as the reference (tensorflow/models, audioset/vggish).

16 kHz mono; 25 ms (400-sample) periodic-Hann frames every 10 ms (160 samples), no padding;
512-point FFT magnitude; 64 mel bands 125-7500 Hz with triangles linear on the HTK mel scale
(1127 ln(1 + f/700)) and the DC bin zeroed; log(mel + 0.01). Examples are 96 consecutive
frames (0.96 s) of 64 bands, cut every ``hop_frames`` frames (96: non-overlapping).
Audio shorter than one example gives zero examples, as the reference does.

librosa's mel filters are triangles in Hz, not in mel, so they differ from the reference by
up to a few per cent: the filter bank is built here. Everything streams: audio arrives in
chunks of any size and examples leave in batches, so memory is flat for long audio.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 400          # 25 ms
HOP = 160             # 10 ms
FFT = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96   # 0.96 s
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
# the network's shapes, shared by the torch and TensorFlow code and the postprocessing
EMBEDDING_SIZE = 128
FLAT_FEATURES = 512 * (EXAMPLE_FRAMES // 16) * (MEL_BANDS // 16)  # 12288 after four 2x2 pools


def hop_frames(hop_seconds: float) -> int:
    """Log-mel frames between example starts for an example hop in seconds (0.96 -> 96)."""
    frames = round(hop_seconds * FRAMES_PER_SECOND)
    if frames < 1:
        raise ValueError(f"VGGish example hop {hop_seconds} s is under one 10 ms frame")
    return frames


def _hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """float64 [257, 64]: FFT magnitude bins to mel bands, as the reference builds it."""
    bins_mel = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the reference zeroes the DC bin
    return weights


_MEL = mel_matrix()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW))  # periodic Hann


def log_mel(frames: np.ndarray) -> np.ndarray:
    """float64 [k, 64] log-mel of audio frames [k, 400]."""
    spectrum = np.abs(np.fft.rfft(frames * _HANN, FFT))
    return np.log(spectrum @ _MEL + LOG_OFFSET)


class Windower:
    """Cuts windows of ``length`` rows starting every ``hop`` rows out of a stream of arrays
    (sharing their trailing shape), as each window becomes complete. A window that would run
    past the end is never produced. Holds at most one window plus one chunk."""

    def __init__(self, length: int, hop: int):
        self.length, self.hop = length, hop
        self._buf: np.ndarray | None = None

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """The windows ``[k, length, ...]`` completed by ``chunk`` (k may be 0)."""
        buf = chunk if self._buf is None else np.concatenate([self._buf, chunk])
        count = (len(buf) - self.length) // self.hop + 1 if len(buf) >= self.length else 0
        starts = np.arange(count) * self.hop
        self._buf = buf[count * self.hop:]
        return buf[starts[:, None] + np.arange(self.length)]


class ExampleStream:
    """Mono 16 kHz float audio chunks in, float32 [k, 96, 64] log-mel examples out."""

    def __init__(self, hop_seconds: float = 0.96):
        self._frames = Windower(WINDOW, HOP)
        self._examples = Windower(EXAMPLE_FRAMES, hop_frames(hop_seconds))

    def push(self, chunk: np.ndarray) -> np.ndarray:
        frames = self._frames.push(np.asarray(chunk, np.float64))
        return self._examples.push(log_mel(frames).astype(np.float32))


def iter_examples(chunks: Iterable[np.ndarray], hop_seconds: float = 0.96) -> Iterator[np.ndarray]:
    """float32 [k, 96, 64] log-mel examples of mono 16 kHz audio chunks, in time order."""
    stream = ExampleStream(hop_seconds)
    for chunk in chunks:
        examples = stream.push(chunk)
        if len(examples):
            yield examples


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """[N] or [N, channels] audio to mono float64 [N] by averaging the channels (in float64,
    as the reference)."""
    waveform = np.asarray(waveform, np.float64)
    if waveform.ndim == 2:
        return waveform.mean(axis=1)
    if waveform.ndim != 1:
        raise ValueError(f"expected audio [N] or [N, channels], got shape {waveform.shape}")
    return waveform


def waveform_to_examples(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE,
                         hop_seconds: float = 0.96) -> np.ndarray:
    """float32 [n, 96, 64] examples of a whole waveform ([N] or [N, channels], float in
    [-1, 1]); channels are averaged, other rates resampled to 16 kHz (librosa/soxr)."""
    mono = to_mono(waveform).astype(np.float64)
    if sample_rate != SAMPLE_RATE:
        import librosa
        mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    batches = list(iter_examples([mono], hop_seconds))
    if not batches:
        return np.zeros((0, EXAMPLE_FRAMES, MEL_BANDS), np.float32)
    return np.concatenate(batches)


def examples_in(samples: int, hop_seconds: float = 0.96) -> int:
    """How many examples ``samples`` samples at 16 kHz give."""
    frames = (samples - WINDOW) // HOP + 1 if samples >= WINDOW else 0
    return (frames - EXAMPLE_FRAMES) // hop_frames(hop_seconds) + 1 if frames >= EXAMPLE_FRAMES else 0
