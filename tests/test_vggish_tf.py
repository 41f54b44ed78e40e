"""VGGish on the TensorFlow side: the official checkpoint <-> PyTorch-port state_dict, the
SavedModel with the TF-Hub interface, streaming HubVggish, ``actprep vggish-convert``.

Checked against the reference arrays of tests/data (vggish/golden.npz, made by the
tensorflow/models implementation with the weights of vggish/make_weights.py). The network
is big (fc1 alone is 12288 x 4096), so each file is written once per module.

TensorFlow takes seconds to import, so it is imported when the first test of this module
runs (the ``_tensorflow`` fixture), not when the tests are collected."""
from __future__ import annotations

import importlib.util
import os
import shutil
import types

import numpy as np
import pytest
import torch
from conftest import load_data_script, reference_data

from actprep.extractors.audio.vggish_input import to_mono, waveform_to_examples
from actprep.extractors.audio.vggish_torch import VggishEmbedder, load_state_dict

CASES = ("sine_1khz_3s", "chirp_noise_5_3s", "stereo_2_5s", "short_0_5s")
TOL = 1e-4

pytestmark = [pytest.mark.slow]
vt = tf = None  # actprep.extractors.audio.vggish_tf and tensorflow, set by _tensorflow


@pytest.fixture(scope="module", autouse=True)
def _tensorflow():
    """Imports vggish_tf (it loads triton, then TensorFlow: see
    load_triton_before_tensorflow), then tensorflow, into this module's ``vt`` and ``tf``."""
    global vt, tf
    if importlib.util.find_spec("tensorflow") is None:  # not importorskip: triton goes first
        pytest.skip("tensorflow not installed (the tfhub extra)")
    from actprep.extractors.audio import vggish_tf  # noqa: I001 - this order, see above
    import tensorflow

    vt, tf = vggish_tf, tensorflow


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest reference value."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max()) if b.size else 0.0


@pytest.fixture(scope="module")
def ref():
    make_weights = load_data_script("vggish", "make_weights.py")
    golden = np.load(reference_data("vggish", "golden.npz"))
    return types.SimpleNamespace(golden=golden, weights=make_weights.weights())


def mono(ref, name: str) -> np.ndarray:
    """float32 mono waveform of a golden case (channels averaged in float64, as the
    reference averages its float64 samples)."""
    return to_mono(ref.golden[f"{name}/waveform"].astype(np.float64)).astype(np.float32)


def golden_embeddings(ref, name: str) -> np.ndarray:
    key = f"{name}/embeddings"
    return ref.golden[key] if key in ref.golden.files else np.zeros((0, 128), np.float32)


@pytest.fixture(scope="module")
def big_tmp(tmp_path_factory):
    """A folder for the module's ~300 MB files, removed afterwards."""
    folder = tmp_path_factory.mktemp("vggish_tf")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint(ref, big_tmp) -> str:
    """A V2 checkpoint of the make_weights weights, with the official variable names."""
    prefix = str(big_tmp / "ckpt" / "vggish")
    vt.write_checkpoint(ref.weights, prefix)
    return prefix


@pytest.fixture(scope="module")
def hub_model(ref, big_tmp) -> vt.HubVggish:
    """The make_weights weights exported as a SavedModel, loaded through tensorflow-hub;
    2 examples per model call, so streaming crosses several segments."""
    directory = str(big_tmp / "saved_model")
    vt.export_saved_model(ref.weights, directory)
    return vt.HubVggish(directory, batch_examples=2)


@pytest.fixture(scope="module")
def torch_embedder(ref) -> VggishEmbedder:
    return VggishEmbedder({k: torch.from_numpy(v) for k, v in ref.weights.items()})


# (a) checkpoint <-> state_dict

def test_checkpoint_round_trip_is_exact(ref, checkpoint):
    variables = dict(tf.train.list_variables(checkpoint))
    # the official vggish_slim names and TF layouts (conv HWIO, dense [in, out])
    assert variables["vggish/conv1/weights"] == [3, 3, 1, 64]
    assert variables["vggish/conv3/conv3_2/weights"] == [3, 3, 256, 256]
    assert variables["vggish/conv4/conv4_1/biases"] == [512]
    assert variables["vggish/fc1/fc1_1/weights"] == [12288, 4096]
    assert variables["vggish/fc2/weights"] == [4096, 128]
    assert set(variables) == set(vt.tf_variable_shapes()) and len(variables) == 18
    reader = tf.train.load_checkpoint(checkpoint)
    np.testing.assert_array_equal(reader.get_tensor("vggish/conv2/weights")[2, 0, 5, 7],
                                  ref.weights["features.3.weight"][7, 5, 2, 0])
    np.testing.assert_array_equal(reader.get_tensor("vggish/fc1/fc1_2/weights")[10, 3],
                                  ref.weights["embeddings.2.weight"][3, 10])

    state = vt.checkpoint_to_state_dict(checkpoint)
    assert set(state) == set(ref.weights)
    for name, value in ref.weights.items():
        assert state[name].dtype == np.float32 and state[name].flags.c_contiguous
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_v1_checkpoint_with_extra_variables(ref, big_tmp):
    """The official file is a V1 checkpoint; training leftovers are ignored."""
    variables = vt.state_dict_to_tf_variables(ref.weights)
    variables["global_step"] = np.int64(7)
    variables["vggish/conv1/weights/Adam"] = np.zeros((3, 3, 1, 64), np.float32)
    path = str(big_tmp / "v1" / "vggish_model.ckpt")
    vt.write_variables(variables, path, version=1)
    assert os.path.isfile(path)  # one file, no .index
    state = vt.checkpoint_to_state_dict(path)
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


# (b) converted weights in the torch backend

def test_converted_checkpoint_reproduces_golden_in_torch(ref, checkpoint):
    embedder = VggishEmbedder({k: torch.from_numpy(v)
                               for k, v in vt.checkpoint_to_state_dict(checkpoint).items()})
    for name in CASES:
        out = embedder.embed(waveform_to_examples(mono(ref, name)))
        assert rel(out, golden_embeddings(ref, name)) < TOL, name


# (c) SavedModel with the TF-Hub interface

def test_saved_model_reproduces_golden(ref, hub_model, torch_embedder):
    for name in CASES:
        wave = mono(ref, name)
        out = hub_model.embed_waveform(wave)
        assert out.dtype == np.float32
        assert rel(out, golden_embeddings(ref, name)) < TOL, name
        with_torch = torch_embedder.embed(waveform_to_examples(wave))
        assert rel(out, with_torch) < TOL, name
        # the preprocessing inside the SavedModel is the reference's, to float32 rounding
        examples = hub_model.model.log_mel_examples(tf.constant(wave)).numpy()
        golden = ref.golden[f"{name}/log_mel_examples"]
        assert examples.shape == golden.shape
        if golden.size:
            assert np.abs(examples - golden).max() <= 1e-5, name
    assert hub_model.embed_waveform(mono(ref, "short_0_5s")).shape == (0, 128)
    assert hub_model.embed_waveform(np.zeros(0, np.float32)).shape == (0, 128)


def test_saved_model_called_as_tf_hub_model(hub_model):
    """model(waveform) on a tensor, as TF-Hub users call it."""
    out = hub_model.model(tf.zeros([16000 * 2], tf.float32))
    assert out.dtype == tf.float32 and out.shape == (2, 128)


# (d) streaming

def test_streaming_equals_whole_call(ref, hub_model):
    wave = np.concatenate([mono(ref, "chirp_noise_5_3s"), mono(ref, "sine_1khz_3s"),
                           mono(ref, "chirp_noise_5_3s")])  # 13.6 s: 14 examples, 7 segments
    whole = hub_model.embed_waveform(wave)
    assert whole.shape == (14, 128)
    three_s = 3 * 16000
    chunkings = {
        "777": [wave[i:i + 777] for i in range(0, len(wave), 777)],
        "3 s + rest": [wave[:three_s], wave[three_s:]],
        "empty chunks and one sample": [wave[:0], wave[:1], wave[:0], wave[1:]],
        "one segment exactly": [wave[:2 * 15360 + 240], wave[2 * 15360 + 240:]],
    }
    for label, chunks in chunkings.items():
        assert sum(map(len, chunks)) == len(wave)
        out = hub_model.embed_audio(chunks)
        # the same log-mel examples; the network only sees other batch compositions
        assert out.shape == whole.shape and rel(out, whole) < 1e-5, label
    stream = hub_model.stream()
    for i in range(0, 20000, 999):
        stream.push(wave[i:min(i + 999, 20000)])
    assert rel(stream.finish(), whole[:1]) < 1e-5
    assert hub_model.embed_audio([wave[:15599]]).shape == (0, 128)  # 1 sample short of 0.96 s
    assert hub_model.embed_audio([wave[:15600]]).shape == (1, 128)
    assert hub_model.embed_audio([]).shape == (0, 128)


# (e) actprep vggish-convert

@pytest.mark.e2e
def test_cli_round_trip(ref, checkpoint, big_tmp, run_cli, capsys):
    pth = str(big_tmp / "cli" / "vggish.pth")
    assert run_cli(["vggish-convert", "--checkpoint", checkpoint, "-o", pth]) == 0
    assert pth in capsys.readouterr().out
    with open(pth, "rb") as f:
        state = load_state_dict(f, pth)
    embedder = VggishEmbedder(state)
    for name in ("chirp_noise_5_3s", "stereo_2_5s"):
        out = embedder.embed(waveform_to_examples(mono(ref, name)))
        assert rel(out, golden_embeddings(ref, name)) < TOL, name

    saved = str(big_tmp / "cli" / "saved_model")
    assert run_cli(["vggish-convert", "--weights", pth, "--saved-model", saved]) == 0
    assert saved in capsys.readouterr().out
    hub_model = vt.HubVggish(saved)
    for name in ("chirp_noise_5_3s", "stereo_2_5s"):
        out = hub_model.embed_audio([mono(ref, name)])
        assert rel(out, golden_embeddings(ref, name)) < TOL, name


# (f) errors

def test_checkpoint_errors_name_the_variable(ref, big_tmp, run_cli, capsys):
    variables = vt.state_dict_to_tf_variables(ref.weights)
    del variables["vggish/fc1/fc1_1/weights"]  # (also keeps this file small)
    variables["vggish/conv1/weights"] = np.zeros((64, 1, 3, 3), np.float32)  # torch layout
    prefix = str(big_tmp / "bad" / "vggish")
    vt.write_variables(variables, prefix)
    with pytest.raises(ValueError) as err:
        vt.checkpoint_to_state_dict(prefix)
    message = str(err.value)
    assert prefix in message
    assert "missing variable vggish/fc1/fc1_1/weights (expected shape [12288, 4096])" in message
    assert "vggish/conv1/weights has shape [64, 1, 3, 3], expected [3, 3, 1, 64]" in message

    assert run_cli(["vggish-convert", "--checkpoint", prefix, "-o",
                    str(big_tmp / "bad" / "out.pth")]) == 2
    stderr = capsys.readouterr().err
    assert "actprep vggish-convert: error: VGGish checkpoint" in stderr
    assert "vggish/fc1/fc1_1/weights" in stderr
    assert not os.path.exists(big_tmp / "bad" / "out.pth")

    missing = str(big_tmp / "bad" / "no_such_ckpt")
    with pytest.raises(ValueError, match="no_such_ckpt: not a readable TensorFlow checkpoint"):
        vt.checkpoint_to_state_dict(missing)


def test_cli_usage_errors(big_tmp, run_cli, capsys):
    not_weights = big_tmp / "bad" / "not_weights.pth"
    not_weights.parent.mkdir(exist_ok=True)
    not_weights.write_bytes(b"not a torch file")
    assert run_cli(["vggish-convert", "--weights", str(not_weights), "-o",
                    str(big_tmp / "bad" / "x.pth")]) == 2
    assert f"error: VGGish weights {not_weights}" in capsys.readouterr().err
    assert run_cli(["vggish-convert", "--weights", str(not_weights)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert run_cli(["vggish-convert", "-o", str(big_tmp / "bad" / "x.pth")]) == 2
    assert "one of the arguments --checkpoint --weights is required" in capsys.readouterr().err


def test_bad_hub_handle_is_named(tmp_path):
    missing = str(tmp_path / "no_model_here")
    with pytest.raises(ValueError, match=f"VGGish TF-Hub model {missing}: cannot load"):
        vt.HubVggish(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"VGGish TF-Hub model {empty}"):
        vt.HubVggish(str(empty))


def test_state_dict_errors_name_the_key(ref):
    weights = dict(ref.weights)
    weights.pop("embeddings.4.bias")
    weights["features.0.weight"] = weights["features.0.weight"][:32]
    with pytest.raises(ValueError) as err:
        vt.state_dict_to_tf_variables(weights, "my.pth")
    assert "my.pth" in str(err.value) and "missing embeddings.4.bias" in str(err.value)
    assert "features.0.weight has shape [32, 1, 3, 3], expected [64, 1, 3, 3]" in str(err.value)


# the tfhub backend in actprep run

@pytest.mark.e2e
def test_run_with_tfhub_backend_equals_torch_backend(hub_model, big_tmp, vggish_ref, run_cli,
                                                     tmp_path):
    import pyarrow.parquet as pq

    from actprep.extractors.synth import make_video
    from actprep.schemas.sample import iter_samples
    from conftest import LOCAL_BEAM

    make_video(str(tmp_path / "a.mp4"), duration=2.2, fps=10, size=(64, 48), audio_freq=600,
               audio_channels=2)
    (tmp_path / "list.csv").write_text("path,label\na.mp4,x\n")
    outputs = {}
    for backend, weights in (("tfhub", ["--vggish-hub", str(big_tmp / "saved_model")]),
                             ("torch", ["--vggish-weights", vggish_ref.weights_path])):
        out = tmp_path / backend
        assert run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
                        "--output", out, "--modalities", "vggish", "--vggish-backend",
                        backend, *weights, "--vggish-pca", vggish_ref.pca_path,
                        "--no-progress", *LOCAL_BEAM]) == 0
        assert pq.read_table(out / "index").column("vggish_examples").to_pylist() == [2]
        (sample,) = iter_samples(str(out / "shard-000000.tar"))
        assert sample["meta"]["params"]["vggish"]["backend"] == backend
        outputs[backend] = sample
    assert rel(outputs["tfhub"]["vggish"], outputs["torch"]["vggish"]) < 1e-4
    diff = outputs["tfhub"]["vggish_pca"].astype(int) - outputs["torch"]["vggish_pca"]
    assert np.abs(diff).max() <= 1


def test_tensorflow_and_torch_compile_share_a_process():
    """TensorFlow loaded first makes a later triton load (torch.compile imports triton when
    installed, as CUDA builds of torch do) abort the process on LLVM's option registry;
    vggish_tf loads triton first, so a job with the TF-Hub VGGish and compiled flow runs."""
    import subprocess
    import sys

    code = ("import actprep.extractors.audio.vggish_tf\n"
            "import torch._dynamo\n"
            "print('both loaded')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "both loaded"
