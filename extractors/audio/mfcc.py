"""MFCC matrices with librosa.

Defaults follow the log-mel front ends of the ActivityNet-challenge audio models
(SE-ResNet-50 / ResNet-50 on MFCC "images"): 16 kHz mono, 25 ms Hann window (400 samples)
in a 512-point FFT, 10 ms hop (160 samples), 64 mel bands over 0-8000 Hz, 40 coefficients
(DCT-II, orthonormal), centred frames. One column per 10 ms, so T = 1 + len(audio) // hop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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


def mfcc(audio: np.ndarray, params: MfccParams = MfccParams()) -> np.ndarray:
    """float32 [n_mfcc, T] MFCC of mono float audio at ``params.sample_rate``."""
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [N], got shape {audio.shape}")
    out = librosa.feature.mfcc(
        y=np.asarray(audio, np.float32), sr=params.sample_rate, n_mfcc=params.n_mfcc,
        n_mels=params.n_mels, n_fft=params.n_fft, win_length=params.win_length,
        hop_length=params.hop_length, fmin=params.fmin, fmax=params.fmax, center=params.center,
        window="hann", htk=False, norm="ortho",
    )
    return np.ascontiguousarray(out, dtype=np.float32)
