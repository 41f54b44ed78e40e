"""VGGish: reference preprocessing and network against the golden arrays of the reference
implementation, weight and PCA files, audio decoding for it, and the vggish modality."""
from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from actprep.extractors.audio import vggish_input as vi
from actprep.extractors.audio.vggish_pca import PcaParams, load_pca, postprocess
from actprep.extractors.audio.vggish_torch import (VggishEmbedder, VggishStream,
                                                   load_state_dict)
from actprep.extractors.decode import decode_audio, iter_audio
from actprep.extractors.ffmpeg_bin import ffmpeg_exe
from actprep.extractors.synth import make_video
from actprep.schemas.sample import decode_sample
from conftest import LOCAL_BEAM

CASES = ("sine_1khz_3s", "chirp_noise_5_3s", "stereo_2_5s", "short_0_5s")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def embedder(vggish_ref):
    with open(vggish_ref.weights_path, "rb") as f:
        state = load_state_dict(f, vggish_ref.weights_path)
    return VggishEmbedder(state, "cpu", batch_size=64)


# --- preprocessing --------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_log_mel_examples_match_reference(vggish_ref, case):
    golden = vggish_ref.golden[f"{case}/log_mel_examples"]
    examples = vi.waveform_to_examples(vggish_ref.golden[f"{case}/waveform"])
    assert examples.shape == golden.shape and examples.dtype == np.float32
    if golden.size:
        assert np.abs(examples - golden).max() < 1e-4


def test_streaming_examples_equal_whole_signal(vggish_ref):
    wave = vggish_ref.golden["chirp_noise_5_3s/waveform"]
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(wave)), 40, replace=False))
    batches = list(vi.iter_examples(np.split(wave, cuts)))
    assert np.array_equal(np.concatenate(batches), vi.waveform_to_examples(wave))


def test_examples_count_and_short_audio():
    assert vi.examples_in(15600) == 1 and vi.examples_in(15599) == 0  # 95 hops + a window
    assert vi.examples_in(0) == 0 and vi.examples_in(399) == 0
    assert vi.waveform_to_examples(np.zeros(300, np.float32)).shape == (0, 96, 64)
    for n in (15599, 15600, 30959, 30960, 48000):
        assert len(vi.waveform_to_examples(np.zeros(n, np.float32))) == vi.examples_in(n)


def test_example_hop(vggish_ref):
    wave = vggish_ref.golden["chirp_noise_5_3s/waveform"]
    half = vi.waveform_to_examples(wave, hop_seconds=0.48)
    full = vi.waveform_to_examples(wave)
    assert len(full) == 5 and len(half) == vi.examples_in(len(wave), 0.48) == 10
    assert np.array_equal(half[::2][:len(full)], full)
    with pytest.raises(ValueError, match="hop"):
        vi.hop_frames(0.001)


def test_other_rates_are_resampled(vggish_ref):
    import librosa

    wave = vggish_ref.golden["sine_1khz_3s/waveform"]
    wave44 = librosa.resample(wave, orig_sr=16000, target_sr=44100)
    examples = vi.waveform_to_examples(wave44, sample_rate=44100)
    golden = vggish_ref.golden["sine_1khz_3s/log_mel_examples"]
    assert examples.shape == golden.shape
    assert np.median(np.abs(examples - golden)) < 0.05


# --- network and postprocessing -------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_embeddings_match_reference(vggish_ref, embedder, case):
    golden = vggish_ref.golden
    out = embedder.embed(golden[f"{case}/log_mel_examples"])
    assert out.dtype == np.float32 and out.shape == (len(golden[f"{case}/log_mel_examples"]), 128)
    if case == "short_0_5s":
        return  # 0.5 s: no whole example, as the reference
    expected = golden[f"{case}/embeddings"]
    assert _rel(out, expected) < 1e-4
    assert (out < 0).any(), "fc2 has no ReLU: raw embeddings take negative values"
    pca = PcaParams.from_arrays(vggish_ref.pca["pca_eigen_vectors"],
                                vggish_ref.pca["pca_means"], "test")
    quantized = postprocess(out, pca)
    assert quantized.dtype == np.uint8
    assert np.abs(quantized.astype(int) - golden[f"{case}/postprocessed"]).max() <= 1


def test_stream_equals_batch_and_batch_size_does_not_matter(vggish_ref, embedder):
    wave = vggish_ref.golden["chirp_noise_5_3s/waveform"]
    stream = VggishStream(embedder)
    for part in np.array_split(wave, 7):
        stream.push(part)
    whole = embedder.embed(vi.waveform_to_examples(wave))
    # the batch composition moves values by float rounding only (~1e-6)
    assert _rel(stream.finish(), whole) < 1e-5
    small = VggishEmbedder(embedder.model.state_dict(), "cpu", batch_size=2)
    assert _rel(small.embed(vi.waveform_to_examples(wave)), whole) < 1e-5
    empty = VggishStream(embedder)
    empty.push(np.zeros(8000, np.float32))
    assert empty.finish().shape == (0, 128)


def _saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_weight_file_errors_name_the_file_and_the_problem(vggish_ref):
    state = {k: torch.from_numpy(v) for k, v in vggish_ref.weights.items()}
    missing = dict(state)
    del missing["embeddings.4.weight"]
    with pytest.raises(ValueError, match=r"w\.pth.*missing embeddings\.4\.weight"):
        load_state_dict(_saved(missing), "w.pth")
    shaped = {**state, "features.0.weight": torch.zeros(32, 1, 3, 3)}
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape \(32, 1, 3, 3\)"):
        load_state_dict(_saved(shaped), "w.pth")
    with pytest.raises(ValueError, match="unexpected embeddings.5.weight"):
        load_state_dict(_saved({**state, "embeddings.5.weight": torch.zeros(1)}), "w.pth")
    with pytest.raises(ValueError, match="not a readable PyTorch"):
        load_state_dict(io.BytesIO(b"this is not a checkpoint"), "w.pth")


def test_pca_files(vggish_ref):
    vectors, means = vggish_ref.pca["pca_eigen_vectors"], vggish_ref.pca["pca_means"]
    with open(vggish_ref.pca_path, "rb") as f:
        from_npz = load_pca(f.read(), vggish_ref.pca_path)
    port_numpy = _saved({"pca_eigen_vectors": vectors, "pca_means": means}).getvalue()
    port_tensor = _saved({"pca_eigen_vectors": torch.from_numpy(vectors),
                          "pca_means": torch.from_numpy(means).reshape(-1, 1)}).getvalue()
    for pca in (from_npz, load_pca(port_numpy, "p.pth"), load_pca(port_tensor, "p.pth")):
        assert np.array_equal(pca.eigen_vectors, vectors) and np.array_equal(pca.means, means)
    buf = io.BytesIO()
    np.savez(buf, pca_eigen_vectors=vectors[:64], pca_means=means)
    with pytest.raises(ValueError, match=r"bad\.npz.*\(64, 128\)"):
        load_pca(buf.getvalue(), "bad.npz")
    with pytest.raises(ValueError, match=r"junk\.bin.*neither"):
        load_pca(b"junk", "junk.bin")
    with pytest.raises(ValueError, match="found means"):
        load_pca(_saved({"means": means}).getvalue(), "other.pth")


# --- audio decoding for VGGish --------------------------------------------------------------

def _encode(raw: np.ndarray, rate: int, path, codec_args: list[str]) -> str:
    """Writes float [N, C] audio through ffmpeg with the given codec arguments."""
    channels = raw.shape[1]
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "f32le", "-ar", str(rate),
                    "-ac", str(channels), "-i", "pipe:", *codec_args, str(path)],
                   input=np.ascontiguousarray(raw, "<f4").tobytes(), check=True)
    return str(path)


def _stereo(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * (300 + 900 * t) * t)  # chirp
    right = 0.2 * np.random.default_rng(1).standard_normal(len(t)).clip(-2, 2)
    return np.stack([left, right], 1).astype(np.float32)


def test_channels_are_averaged(tmp_path):
    raw = _stereo(1.0, 16000)
    path = _encode(raw, 16000, tmp_path / "s.wav", ["-c:a", "pcm_s16le"])
    mono = decode_audio(path, 16000, channels=2)
    assert mono.shape == (16000,)
    assert np.abs(mono - raw.mean(axis=1)).max() < 2 / 32768


@pytest.mark.parametrize("name,args", [
    ("pcm.wav", ["-c:a", "pcm_s16le"]),
    ("aac.m4a", ["-c:a", "aac", "-b:a", "192k"]),
    ("mp3.mp3", ["-c:a", "libmp3lame", "-b:a", "192k"]),
    ("ac3.ac3", ["-c:a", "ac3", "-b:a", "192k"]),
    ("vorbis.ogg", ["-c:a", "libvorbis", "-q:a", "6"]),
    ("opus.opus", ["-c:a", "libopus", "-b:a", "128k"]),
])
def test_any_audio_codec_gives_the_pcm_examples(tmp_path, name, args):
    raw = _stereo(3.0, 44100)
    reference = vi.waveform_to_examples(raw, sample_rate=44100)
    path = _encode(raw, 44100, tmp_path / name, args)
    examples = np.concatenate(list(vi.iter_examples(iter_audio(path, 16000, channels=2))))
    assert examples.shape == reference.shape == (3, 96, 64)
    # lossy codecs and encoder delays shift things a little; the spectrogram stays put
    assert np.median(np.abs(examples - reference)) < (1e-3 if name == "pcm.wav" else 0.3)


# --- the vggish modality in actprep run -----------------------------------------------------

@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggishset")
    make_video(str(root / "tone.mp4"), duration=2.5, fps=10, size=(64, 48),
               audio_freq=700, audio_rate=44100, audio_channels=2)
    make_video(str(root / "mute.mp4"), duration=1.0, fps=10, size=(64, 48), audio_freq=None)
    make_video(str(root / "blip.mp4"), duration=0.5, fps=10, size=(64, 48), audio_freq=500)
    with open(root / "list.csv", "w") as f:
        f.write("path,label\ntone.mp4,a\nmute.mp4,b\nblip.mp4,a\n")
    return root


def _run(run_cli, root, out, *extra) -> int:
    return run_cli(["run", "--dataset", "generic", "--manifest", root / "list.csv",
                    "--output", out, "--modalities", "mfcc,vggish", "--no-progress",
                    *extra, *LOCAL_BEAM])


@pytest.mark.slow
@pytest.mark.e2e
def test_run_with_vggish(run_cli, audio_set, vggish_ref, embedder, tmp_path):
    out = tmp_path / "out"
    assert _run(run_cli, audio_set, out, "--vggish-weights", vggish_ref.weights_path,
                "--vggish-pca", vggish_ref.pca_path) == 0
    rows = {r["source_path"].rsplit("/", 1)[-1]: r for r in pq.read_table(out / "index").to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    samples = {s["__key__"]: s for s in wds.WebDataset(str(out / "shard-000000.tar"),
                                                       shardshuffle=False)}
    tone = decode_sample(samples[rows["tone.mp4"]["key"]])
    wave = decode_audio(str(audio_set / "tone.mp4"), 16000, channels=2)
    expected = embedder.embed(vi.waveform_to_examples(wave))
    assert len(expected) == vi.examples_in(len(wave)) == 2
    assert tone["vggish"].dtype == np.float32 and tone["vggish"].shape == (2, 128)
    assert _rel(tone["vggish"], expected) < 1e-5
    pca = load_pca(open(vggish_ref.pca_path, "rb").read(), "pca")
    assert np.array_equal(tone["vggish_pca"], postprocess(tone["vggish"], pca))
    assert rows["tone.mp4"]["vggish_examples"] == 2 and tone["mfcc"] is not None
    params = tone["meta"]["params"]["vggish"]
    assert params["backend"] == "torch" and params["device"] == "cpu"
    assert params["hop_seconds"] == 0.96 and len(params["weights_sha256"]) == 64
    blip = decode_sample(samples[rows["blip.mp4"]["key"]])  # 0.5 s: no whole example
    assert blip["vggish"].shape == (0, 128) and blip["vggish_pca"].shape == (0, 128)
    assert rows["blip.mp4"]["vggish_examples"] == 0
    mute = decode_sample(samples[rows["mute.mp4"]["key"]])
    assert mute["vggish"] is None and mute["vggish_pca"] is None
    assert rows["mute.mp4"]["vggish_examples"] is None and rows["mute.mp4"]["has_audio"] is False


@pytest.mark.slow
@pytest.mark.e2e
def test_run_vggish_hop(run_cli, audio_set, vggish_ref, tmp_path):
    out = tmp_path / "out"
    assert _run(run_cli, audio_set, out, "--vggish-weights", vggish_ref.weights_path,
                "--vggish-hop", "0.24") == 0
    rows = {r["source_path"].rsplit("/", 1)[-1]: r for r in pq.read_table(out / "index").to_pylist()}
    wave_len = len(decode_audio(str(audio_set / "tone.mp4"), 16000, channels=2))
    assert rows["tone.mp4"]["vggish_examples"] == vi.examples_in(wave_len, 0.24) > 2


@pytest.mark.parametrize("args,message", [
    ([], "needs --vggish-weights"),
    (["--vggish-weights", "{tmp}/nope.pth"], "nope.pth: file not found"),
    (["--vggish-weights", "{pca}"], "not a readable PyTorch"),
    (["--vggish-weights", "{weights}", "--vggish-pca", "{weights}"], "VGGish PCA"),
    (["--vggish-backend", "tfhub"], "needs --vggish-hub"),
    (["--vggish-weights", "{weights}", "--vggish-hub", "{tmp}"], "--vggish-hub is for"),
    (["--vggish-backend", "tfhub", "--vggish-hub", "{tmp}", "--vggish-hop", "0.5"],
     "fixes the hop"),
])
def test_run_refuses_bad_vggish_settings(run_cli, audio_set, vggish_ref, tmp_path, capsys,
                                         args, message):
    names = {"tmp": tmp_path, "pca": vggish_ref.pca_path, "weights": vggish_ref.weights_path}
    code = _run(run_cli, audio_set, tmp_path / "out", *(a.format(**names) for a in args))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "index").exists()


def test_metadata_is_json(vggish_ref):
    """The recorded parameters survive a JSON round trip (no numpy types leak in)."""
    from actprep.pipelines.options import RunOptions

    opts = RunOptions(dataset="generic", manifest="m", output="o", modalities=("vggish",),
                      vggish_weights=vggish_ref.weights_path)
    params = opts.extractor_params({"vggish": {"backend": "torch", "device": "cpu"}})
    assert json.loads(json.dumps(params))["vggish"]["weights"] == vggish_ref.weights_path


@pytest.mark.slow
@pytest.mark.e2e
def test_vggish_shards_are_reproducible(run_cli, audio_set, vggish_ref, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    assert _run(run_cli, audio_set, outs[0], "--vggish-weights", vggish_ref.weights_path) == 0
    assert run_cli(["run", "--dataset", "generic", "--manifest", audio_set / "list.csv",
                    "--output", outs[1], "--modalities", "mfcc,vggish", "--no-progress",
                    "--vggish-weights", vggish_ref.weights_path,
                    "--workers", "2"]) == 0
    for name in ("shard-000000.tar", "index/shard-000000.parquet"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_run_refuses_cuda_without_a_gpu(run_cli, audio_set, vggish_ref, tmp_path, capsys):
    code = _run(run_cli, audio_set, tmp_path / "out", "--vggish-weights",
                vggish_ref.weights_path, "--device", "cuda")
    assert code == 2 and "no CUDA device" in capsys.readouterr().err
