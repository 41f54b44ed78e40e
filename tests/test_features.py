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


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("chunk", [160, 1000, 4097, 48000])
def test_chunked_mfcc_equals_whole_signal_librosa(chunk, center):
    """Streaming audio in chunks of any size gives librosa's whole-signal MFCC."""
    from actprep.extractors.audio.mfcc import mfcc_chunks

    rng = np.random.default_rng(1)
    audio = (_tone(700, 3.0) + 0.1 * rng.standard_normal(48000)).astype(np.float32)[:47_777]
    params = MfccParams(center=center)
    expected = librosa.feature.mfcc(
        y=audio, sr=16000, n_mfcc=40, n_mels=64, n_fft=512, win_length=400, hop_length=160,
        fmin=0, fmax=8000, center=center, norm="ortho")
    got = mfcc_chunks((audio[i:i + chunk] for i in range(0, len(audio), chunk)), params)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_too_short_audio_for_uncentred_frames():
    from actprep.extractors.audio.mfcc import mfcc_chunks

    with pytest.raises(ValueError, match="too few"):
        mfcc_chunks([np.zeros(100, np.float32)], MfccParams(center=False))
    with pytest.raises(ValueError, match="too few"):
        mfcc_chunks([], MfccParams())


def test_audio_streams_in_fixed_chunks(tmp_path):
    from actprep.extractors.decode import decode_audio, iter_audio
    from actprep.extractors.synth import make_video

    path = make_video(str(tmp_path / "a.mkv"), duration=1.2, size=(64, 48), audio_freq=500)
    chunks = list(iter_audio(path, 16000, chunk_seconds=0.25))
    assert all(len(c) == 4000 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 4000
    whole = decode_audio(path)
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert abs(len(whole) - 1.2 * 16000) < 0.02 * 16000


def test_decoder_threads_do_not_change_frames(tmp_path):
    from actprep.extractors.decode import iter_frames
    from actprep.extractors.synth import make_video

    path = make_video(str(tmp_path / "t.mp4"), duration=1.0, size=(320, 240), audio_freq=None)
    one = list(iter_frames(path, (160, 120), threads=1))
    auto = list(iter_frames(path, (160, 120), threads=0))
    assert len(one) == len(auto) == 25
    assert all(np.array_equal(a, b) for a, b in zip(one, auto))
