"""RGB (JPEG) and MFCC extractors on real signals."""
from __future__ import annotations

import cv2
import librosa
import numpy as np
import pytest

from actprep.extractors.audio.mfcc import MfccParams, mfcc
from actprep.extractors.rgb import encode_jpeg


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def test_jpeg_round_trip_keeps_rgb_order_and_is_deterministic():
    frame = _gradient()
    data = encode_jpeg(frame, quality=95)
    assert data[:2] == b"\xff\xd8" and data == encode_jpeg(frame.copy(), quality=95)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert back.shape == frame.shape
    assert np.abs(back.astype(int) - frame).mean() < 2.0
    assert len(encode_jpeg(frame, quality=20)) < len(data)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_jpeg_rejects_non_rgb_frames(bad):
    with pytest.raises(ValueError):
        encode_jpeg(bad)


def test_jpeg_quality_range():
    with pytest.raises(ValueError):
        encode_jpeg(_gradient(), quality=0)


def _tone(freq: float, seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mfcc_shape_and_dtype_follow_the_parameters():
    audio = _tone(440, 2.0)
    out = mfcc(audio)
    assert out.dtype == np.float32 and out.shape == (40, 1 + len(audio) // 160)
    params = MfccParams(n_mfcc=13, hop_length=320, n_mels=40)
    assert mfcc(audio, params).shape == (13, 1 + len(audio) // 320)


def test_mfcc_equals_librosa_from_the_documented_steps():
    """Power mel spectrogram -> dB -> orthonormal DCT-II, as librosa defines MFCC."""
    audio = _tone(1000, 1.0) + 0.05 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=audio, sr=16000, n_fft=512, win_length=400,
                                         hop_length=160, n_mels=64, fmin=0, fmax=8000,
                                         window="hann", center=True, power=2.0)
    expected = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=40, norm="ortho")
    np.testing.assert_allclose(mfcc(audio), expected, rtol=1e-4, atol=1e-3)


def test_mfcc_tells_tones_apart():
    low, high = mfcc(_tone(300, 1.0)), mfcc(_tone(3000, 1.0))
    assert np.abs(low.mean(1) - high.mean(1)).max() > 10


def test_mfcc_parameters_are_checked():
    with pytest.raises(ValueError, match="win_length"):
        MfccParams(win_length=1024, n_fft=512)
    with pytest.raises(ValueError, match="n_mfcc"):
        MfccParams(n_mfcc=80, n_mels=64)
    with pytest.raises(ValueError, match="fmax"):
        MfccParams(fmax=9000)
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.zeros((2, 100), np.float32))
