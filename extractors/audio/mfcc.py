"""MFCC matrices with librosa, computed chunk by chunk so memory stays flat for long audio.

Defaults follow the log-mel front ends of the ActivityNet-challenge audio models
(SE-ResNet-50 / ResNet-50 on MFCC "images"): 16 kHz mono, 25 ms Hann window (400 samples)
in a 512-point FFT, 10 ms hop (160 samples), 64 mel bands over 0-8000 Hz, 40 coefficients
(DCT-II, orthonormal), centred frames. One column per 10 ms, so T = 1 + len(audio) // hop.
The result equals ``librosa.feature.mfcc`` on the whole signal with these parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import librosa
import numpy as np


@dataclass(frozen=True)
class MfccParams:
    sample_rate: int = 16000
    n_mfcc: int = 40
    n_mels: int = 64
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0
    center: bool = True

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"MFCC win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"MFCC n_mfcc {self.n_mfcc} exceeds n_mels {self.n_mels}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"MFCC needs 0 <= fmin < fmax <= {self.sample_rate / 2}")

    def as_dict(self) -> dict:
        return asdict(self)


def _mel_power(segment: np.ndarray, p: MfccParams) -> np.ndarray:
    """Mel power spectrogram of the frames that fit wholly in ``segment`` (no padding)."""
    spec = librosa.stft(segment, n_fft=p.n_fft, hop_length=p.hop_length,
                        win_length=p.win_length, window="hann", center=False)
    return librosa.feature.melspectrogram(S=np.abs(spec) ** 2, sr=p.sample_rate, n_fft=p.n_fft,
                                          n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax, htk=False)


def _frames_mel(buf: np.ndarray, buf_start: int, first: int, stop: int,
               p: MfccParams) -> np.ndarray:
    """Mel power of frames first..stop-1, read from ``buf`` (which starts at ``buf_start``
    of the padded signal)."""
    lo = first * p.hop_length - buf_start
    return _mel_power(buf[lo: lo + (stop - first - 1) * p.hop_length + p.n_fft], p)


class MfccStream:
    """Mono float audio chunks (any sizes) in; ``finish()`` gives float32 [n_mfcc, T].

    Frames are cut from a running buffer exactly where whole-signal framing puts them
    (with librosa's zero padding of n_fft // 2 at both ends when centred), so only the
    small mel matrix grows with the audio's length. The dB conversion needs the global
    maximum (top_db), hence it runs once at the end."""

    def __init__(self, params: MfccParams = MfccParams()):
        self.params = params
        self._pad = params.n_fft // 2 if params.center else 0
        self._buf, self._buf_start = np.zeros(self._pad, np.float32), 0
        self._done, self._total, self._mels = 0, 0, []

    def push(self, chunk: np.ndarray) -> None:
        p = self.params
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio [N], got shape {chunk.shape}")
        self._buf = np.concatenate([self._buf, np.asarray(chunk, np.float32)])
        self._total += len(chunk)
        fit = (self._buf_start + len(self._buf) - p.n_fft) // p.hop_length + 1  # whole frames
        if fit > self._done:
            self._mels.append(_frames_mel(self._buf, self._buf_start, self._done, fit, p))
            drop = fit * p.hop_length - self._buf_start
            self._buf, self._buf_start, self._done = self._buf[drop:], self._buf_start + drop, fit

    def finish(self) -> np.ndarray:
        """The MFCC matrix; ValueError when the audio is too short for one frame."""
        p, total = self.params, self._total
        frames = 1 + total // p.hop_length if p.center else 1 + (total - p.n_fft) // p.hop_length
        if total == 0 or frames < 1:
            raise ValueError(f"{total} audio samples are too few for one MFCC frame")
        mels = list(self._mels)
        if frames > self._done:
            tail = np.concatenate([self._buf, np.zeros(self._pad, np.float32)])
            mels.append(_frames_mel(tail, self._buf_start, self._done, frames, p))
        log_mel = librosa.power_to_db(np.concatenate(mels, axis=1))
        out = librosa.feature.mfcc(S=log_mel, n_mfcc=p.n_mfcc, dct_type=2, norm="ortho")
        return np.ascontiguousarray(out, dtype=np.float32)


def mfcc_chunks(chunks: Iterable[np.ndarray], params: MfccParams = MfccParams()) -> np.ndarray:
    """float32 [n_mfcc, T] MFCC of mono float audio arriving in chunks (see MfccStream)."""
    stream = MfccStream(params)
    for chunk in chunks:
        stream.push(chunk)
    return stream.finish()


def mfcc(audio: np.ndarray, params: MfccParams = MfccParams()) -> np.ndarray:
    """float32 [n_mfcc, T] MFCC of mono float audio at ``params.sample_rate``."""
    return mfcc_chunks([audio], params)
