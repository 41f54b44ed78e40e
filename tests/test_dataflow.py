"""Running where every path is an object-store URI, as on Dataflow: manifest, video root,
class list, weights and output under ``mem://`` (an in-memory Beam FileSystem with gs://'s
semantics: no folders, rename is copy plus delete), and the pipeline built for the
DataflowRunner without submitting it."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import memfs
from actprep.extractors.synth import make_garbage, make_video
from conftest import LOCAL_BEAM

BUCKET = "mem://bucket"
CLIPS = 5  # 4 videos and one garbage file


@pytest.fixture
def mem_set(tmp_path_factory, vggish_ref):
    """Videos, a generic manifest, a class list and VGGish weights in the in-memory store."""
    memfs.clear()
    local = tmp_path_factory.mktemp("memsrc")
    rows = ["path,label"]
    for i in range(CLIPS):
        name = f"part{i % 2}/clip{i}.mp4"
        os.makedirs(local / f"part{i % 2}", exist_ok=True)
        if i == 3:
            make_garbage(str(local / name), seed=3)
        else:
            make_video(str(local / name), duration=1.2, fps=10, size=(64, 48),
                       audio_freq=300 + 100 * i if i != 2 else None, motion=(1.0 + i, 0.5))
        memfs.put(f"{BUCKET}/videos/{name}", (local / name).read_bytes())
        rows.append(f"{name},{'ab'[i % 2]}")
    rows.append("part0/not_there.mp4,a")
    memfs.put(f"{BUCKET}/list.csv", ("\n".join(rows) + "\n").encode())
    memfs.put(f"{BUCKET}/classes.txt", b"b\na\n")
    for path in (vggish_ref.weights_path, vggish_ref.pca_path):
        memfs.put(f"{BUCKET}/models/{os.path.basename(path)}", open(path, "rb").read())
    yield BUCKET
    memfs.clear()


def _args(bucket: str, out: str, *extra) -> list[str]:
    return ["run", "--dataset", "generic", "--manifest", f"{bucket}/list.csv",
            "--video-root", f"{bucket}/videos", "--classes", f"{bucket}/classes.txt",
            "--output", out, "--shard-size", "3", "--size", "64x48",
            "--modalities", "rgb,flow,mfcc,vggish", "--flow-backend", "opencv",
            "--vggish-weights", f"{bucket}/models/vggish.pth",
            "--vggish-pca", f"{bucket}/models/vggish_pca_params.npz", "--no-progress",
            *extra]


def _index(out: str) -> list[dict]:
    rows = []
    for path in memfs.paths(f"{out}/index/"):
        rows += pq.read_table(io.BytesIO(memfs.get(path))).to_pylist()
    return sorted(rows, key=lambda r: r["line"])


@pytest.mark.slow
@pytest.mark.e2e
def test_every_path_on_an_object_store(run_cli, mem_set, capsys, tmp_path):
    out = f"{mem_set}/out"
    assert run_cli(_args(mem_set, out, *LOCAL_BEAM)) == 0
    err = capsys.readouterr().err
    assert "6 videos in 2 shards" in err and "2 classes (" in err, err
    names = {p[len(out) + 1:] for p in memfs.paths(out + "/")}
    assert {"plan.jsonl", "labels.json", "shard-000000.tar", "shard-000001.tar",
            "index/shard-000000.parquet", "index/shard-000001.parquet"} <= names, names
    assert not [n for n in names if n.startswith("work/") or ".tmp-" in n], names
    assert "run.lock" not in names
    rows = _index(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "ok", "failed"]
    assert rows[3]["failure_stage"] == "probe" and rows[5]["failure_stage"] == "manifest"
    assert "not_there.mp4" in rows[5]["failure_reason"]
    assert [r["label_index"] for r in rows] == [1, 0, 1, 0, 1, 1]  # the class list's order
    # what crosses the shuffle per video is its index row: metadata, never frames
    assert max(len(json.dumps(r, default=str)) for r in rows) < 2048
    samples = {}
    for shard in ("shard-000000.tar", "shard-000001.tar"):
        (tmp_path / shard).write_bytes(memfs.get(f"{out}/{shard}"))
        for s in wds.WebDataset(str(tmp_path / shard), shardshuffle=False):
            samples[s["__key__"]] = s
    assert sorted(samples) == sorted(r["key"] for r in rows if r["status"] == "ok")
    first = samples[rows[0]["key"]]
    meta = json.loads(first["json"])
    assert meta["source_path"] == f"{mem_set}/videos/part0/clip0.mp4"
    frames = meta["frames"]
    assert frames == 12 and sum(k.startswith("flow_x.") for k in first) == frames - 1
    assert np.load(io.BytesIO(first["vggish.npy"])).shape == (1, 128)
    assert meta["params"]["vggish"]["weights"] == f"{mem_set}/models/vggish.pth"
    silent = samples[rows[2]["key"]]
    assert "vggish.npy" not in silent and "mfcc.npy" not in silent


@pytest.mark.slow
@pytest.mark.e2e
def test_rerun_on_an_object_store_resumes_and_then_does_nothing(run_cli, mem_set, capsys):
    """Checkpoints and temporaries of an interrupted job in the store: the rerun reuses the
    first, drops the second; a third run finds every shard committed."""
    from actprep.commands.cli import make_parser
    from actprep.commands.runargs import run_options
    from actprep.pipelines.planfile import iter_entries
    from actprep.pipelines.planner import load_or_create_plan
    from actprep.pipelines.process import process_entry

    out = f"{mem_set}/out"
    args, _ = make_parser().parse_known_args(_args(mem_set, out))
    opts = run_options(args)
    load_or_create_plan(opts)
    process_entry(next(iter_entries(out)), opts)  # what a worker finished before it died
    memfs.put(f"{out}/.shard-000000.tar.tmp-0123456789ab", b"half a tar")
    assert run_cli(_args(mem_set, out, *LOCAL_BEAM)) == 0
    err = capsys.readouterr().err
    assert "processed 4 videos, reused 1 checkpointed by an earlier run and recorded 1 " \
        "manifest failures" in err, err
    assert not [p for p in memfs.paths(out) if ".tmp-" in p]
    before = {p: memfs.get(p) for p in memfs.paths(out)}
    assert run_cli(_args(mem_set, out, *LOCAL_BEAM)) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p: memfs.get(p) for p in memfs.paths(out)} == before


@pytest.mark.slow
@pytest.mark.e2e
def test_stats_and_verify_read_an_object_store(run_cli, mem_set, capsys):
    out = f"{mem_set}/out"
    assert run_cli(_args(mem_set, out, *LOCAL_BEAM)) == 0
    capsys.readouterr()
    assert run_cli(["stats", out, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples_ok"] == 4 and stats["samples_failed"] == 2
    assert run_cli(["verify", out]) == 0, capsys.readouterr()


@pytest.mark.slow
def test_missing_inputs_on_an_object_store_are_named(run_cli, mem_set, capsys):
    out = f"{mem_set}/out"
    args = _args(mem_set, out, *LOCAL_BEAM)
    args[args.index("--vggish-weights") + 1] = f"{mem_set}/models/nope.pth"
    assert run_cli(args) == 2
    assert f"{mem_set}/models/nope.pth" in capsys.readouterr().err
    args = _args(mem_set, out, *LOCAL_BEAM)
    args[args.index("--manifest") + 1] = f"{mem_set}/nope.csv"
    assert run_cli(args) == 2
    assert f"{mem_set}/nope.csv" in capsys.readouterr().err
    args = _args(mem_set, out, *LOCAL_BEAM)
    args[args.index("--video-root") + 1] = f"{mem_set}/vidoes"
    assert run_cli(args) == 2
    assert f"video root {mem_set}/vidoes: no files under it" in capsys.readouterr().err


def test_stage_clock_charges_each_stage_its_own_time(monkeypatch):
    from actprep.pipelines import stageclock

    now = [0.0]
    monkeypatch.setattr(stageclock.time, "perf_counter", lambda: now[0])

    def frames():
        for _ in range(3):
            now[0] += 1.0  # decoding a frame takes 1 s
            yield "frame"

    clock = stageclock.StageClock()
    with clock.stage("write"):
        now[0] += 0.5
        for _ in clock.iterate(frames(), "decode"):
            with clock.stage("rgb"):
                now[0] += 2.0
        now[0] += 0.25
    assert clock.seconds == {"write": 0.75, "decode": 3.0, "rgb": 6.0}


@pytest.mark.slow
@pytest.mark.e2e
def test_run_reports_stage_counters(run_cli, mem_set, capsys):
    from actprep.commands.runner import stage_line

    assert run_cli(_args(mem_set, f"{mem_set}/out", *LOCAL_BEAM)) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "time per stage" in x)
    for stage in ("probe", "decode", "flow", "vggish"):  # the others: under 1 ms here
        assert f" {stage} " in line, (stage, line)
    assert stage_line({"flow_ms": 3000, "decode_ms": 1000}) == "flow 3.0 s (75%), decode 1.0 s (25%)"
    assert stage_line({"videos_ok": 3}) == ""


# What the deploy scripts pass for GPU workers (docs/DATAFLOW.md), minus project specifics.
GPU_WORKER_ARGS = [
    "--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
    "--temp_location=gs://my-bucket/tmp", "--sdk_location=container",
    "--sdk_container_image=us-central1-docker.pkg.dev/my-project/actprep/actprep:0.1.0",
    "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
    "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    "--machine_type=g2-standard-8", "--disk_size_gb=100",
    "--number_of_worker_harness_threads=8", "--max_num_workers=20",
]


def test_pipeline_builds_for_dataflow_with_gpu_workers(mem_set):
    """The whole Dataflow job request, short of sending it: the job graph with its fusion
    break, and the worker pool (image, accelerator, one SDK process per VM, threads)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.internal import apiclient

    from actprep.pipelines.job import build
    from actprep.pipelines.options import RunOptions

    opts = RunOptions(dataset="generic", manifest=f"{mem_set}/list.csv",
                      output=f"{mem_set}/out", modalities=("rgb", "flow", "vggish"),
                      vggish_weights=f"{mem_set}/models/vggish.pth")
    memfs.put(f"{mem_set}/out/plan.jsonl", b"")
    options = PipelineOptions(GPU_WORKER_ARGS + ["--dry_run=True"])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts, list(range(650)))
    job = pipeline.run().job
    transforms = job.proto_pipeline.components.transforms
    names = {t.unique_name for t in transforms.values()}
    assert {"Shards", "Units", "Spread", "Process", "ByShard", "Commit"} <= names, names
    # no step reads the whole plan: shard numbers in, each expanded to its units, which
    # a shuffle spreads over the workers before processing
    assert not [n for n in names if "Read" in n and "Plan" in n], names
    by_name = {t.unique_name: t for t in transforms.values()}
    units_out = set(by_name["Units"].outputs.values())
    assert units_out == set(by_name["Spread"].inputs.values())
    assert set(by_name["Spread"].outputs.values()) == set(by_name["Process"].inputs.values())
    images = {e.payload for e in job.proto_pipeline.components.environments.values()}
    assert any(b"docker.pkg.dev/my-project/actprep/actprep:0.1.0" in p for p in images)
    env = apiclient.Environment([], options, "", f"{mem_set}/pipeline.pb",
                                job.proto_pipeline).proto
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(env.experiments)
    assert env.service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    pool = env.worker_pools[0]
    assert pool.machine_type == "g2-standard-8" and pool.disk_size_gb == 100
    assert pool.num_threads_per_worker == 8
    (harness,) = pool.sdk_harness_container_images
    assert harness.use_single_core_per_container  # one SDK process per VM, so per GPU


@pytest.mark.slow
def test_run_command_submits_to_dataflow(run_cli, mem_set, capsys):
    """``actprep run`` with Dataflow's options (dry run: built and checked, not sent)
    plans into the object store and leaves no lock behind."""
    out = f"{mem_set}/out"
    gpu = ["--device", "cuda", "--flow-backend", "auto", "--flow-preset", "tsn"]
    assert run_cli(_args(mem_set, out, *GPU_WORKER_ARGS, "--dry_run=True", *gpu)) == 0
    err = capsys.readouterr().err
    assert "6 videos in 2 shards" in err, err
    # the GPU is on the workers: this CPU-only launcher checks files, not the device
    assert "flow: TV-L1 tsn, backend auto on device cuda, resolved by each worker" in err
    assert memfs.paths(f"{out}/plan.jsonl") and not memfs.paths(f"{out}/run.lock")
    assert "--direct_num_workers" not in err
    assert run_cli(_args(mem_set, out, *GPU_WORKER_ARGS, "--dry_run=True", *gpu,
                         "--machine-typo=x")) == 2
    assert "unknown option --machine-typo" in capsys.readouterr().err


def test_a_remote_jobs_lock_holds_without_its_launcher(tmp_path, monkeypatch):
    """A Dataflow job outlives its launcher: its lock holds while the workers beat, even
    on the launcher's host with the launcher's pid gone, and a released lock stays gone."""
    import json
    import subprocess
    import sys

    from actprep.pipelines import runlock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock = runlock.RunLock(str(tmp_path), remote_job=True)
    monkeypatch.setattr(lock, "_beat", lambda: None)  # the launcher's own beats: none
    lock.acquire()
    path = tmp_path / runlock.LOCK
    doc = json.loads(path.read_text())
    doc["pid"], doc["heartbeat"] = int(dead), doc["heartbeat"] - runlock.STALE_S + 5
    path.write_text(json.dumps(doc))
    assert runlock.holder_alive(doc)  # remote: the dead launcher pid does not matter
    t0 = doc["heartbeat"] + 20
    assert runlock.worker_heartbeat(str(tmp_path), lock.token, now=t0)
    assert not runlock.worker_heartbeat(str(tmp_path), lock.token, now=t0 + 1)  # rate limit
    assert not runlock.worker_heartbeat(str(tmp_path), "another-run", now=t0 + 99)
    beaten = json.loads(path.read_text())
    assert beaten["heartbeat"] == t0 and beaten["pid"] == int(dead)
    assert runlock.holder_alive(beaten, now=t0 + runlock.STALE_S - 1)
    assert not runlock.holder_alive(beaten, now=t0 + runlock.STALE_S + 1)
    with pytest.raises(runlock.RunLocked):
        runlock.RunLock(str(tmp_path)).acquire()
    doc["remote_job"] = False  # a local job with that pid: gone, so the lock is free
    assert not runlock.holder_alive(doc)
    lock.release()
    assert not path.exists()
    assert not runlock.worker_heartbeat(str(tmp_path), lock.token, now=t0 + 60)
    assert not path.exists()


def test_cost_estimate_is_bound_by_the_scarcer_resource():
    import importlib.util
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "estimate.py")
    spec = importlib.util.spec_from_file_location("estimate", path)
    est = importlib.util.module_from_spec(spec)
    sys.modules["estimate"] = est  # dataclasses look their module up
    spec.loader.exec_module(est)
    work = est.Workload(videos=3600, seconds=10, fps=30, flow=True, vggish=False)
    rates = est.Rates(cpu_frames_per_core_s=300, cpu_ms_per_flow_pair=0,
                      gpu_flow_pairs_per_s=299)
    machine = est.Machine(vcpus=4, memory_gb=0, disk_gb=0, gpus=1, gpu_price=1.0,
                          vcpu_price=0.25)
    out = est.estimate(work, rates, machine, workers=2)
    # GPU: 299 pairs at 299/s = 1 s per video; CPU: 300 frames / 300 / 4 cores = 0.25 s
    assert out["bound_by"] == "gpu" and out["vm_seconds_per_video"] == pytest.approx(1.0)
    assert out["vm_hours"] == pytest.approx(1.0) and out["cost"] == pytest.approx(2.0)
    assert out["wall_hours"] == pytest.approx(0.5)
    cpu_only = est.estimate(work, est.Rates(cpu_frames_per_core_s=300, cpu_ms_per_flow_pair=0,
                                            gpu_flow_pairs_per_s=0,
                                            cpu_flow_pairs_per_core_s=1.0),
                            est.Machine(vcpus=4, gpus=0), workers=1)
    assert cpu_only["bound_by"] == "cpu"
    assert cpu_only["vm_seconds_per_video"] == pytest.approx((1 + 299) / 4)


@pytest.mark.slow
def test_no_wait_leaves_the_lock_to_the_job(run_cli, mem_set, capsys):
    """A Flex Template launcher submits and exits (--no-wait): the lock is handed over to
    the job, held through its workers' start-up, and a second launch is refused."""
    import json

    from actprep.pipelines import runlock

    out = f"{mem_set}/out"
    assert run_cli(_args(mem_set, out, *GPU_WORKER_ARGS, "--dry_run=True", "--no-wait")) == 0
    assert "job submitted" in capsys.readouterr().err
    held = json.loads(memfs.get(f"{out}/{runlock.LOCK}"))
    assert held["remote_job"] and held["handed_over"]
    assert runlock.holder_alive(held, now=held["heartbeat"] - 1)  # still starting up
    assert not runlock.holder_alive(held, now=held["heartbeat"] + runlock.STALE_S + 1)
    assert runlock.worker_heartbeat(out, held["token"])  # the job's workers take it on
    assert run_cli(_args(mem_set, out, *GPU_WORKER_ARGS, "--dry_run=True")) == 3
    assert "another actprep run is writing" in capsys.readouterr().err


def test_dataflow_without_the_gcp_extras_is_one_clear_error(run_cli, mem_set, capsys,
                                                            monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "apache_beam.runners.dataflow.internal.apiclient", None)
    out = f"{mem_set}/out"
    assert run_cli(_args(mem_set, out, *GPU_WORKER_ARGS, "--dry_run=True")) == 2
    assert "needs Beam's Google Cloud extras: pip install 'actprep[gcp]'" in \
        capsys.readouterr().err
    assert not memfs.paths(out)  # refused before planning
