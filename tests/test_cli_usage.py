"""The command line's usage errors: a misspelt option or choice is one line naming the
nearest valid ones (status 2, no traceback), ``actprep run`` still hands Beam's options on
but no longer a misspelt one; the argparse surface of ``actprep run`` is apart from the
options record; and Beam's "apitools not found" import warning is not printed."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from actprep.commands import cli, runargs

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
RUN = ["run", "--dataset", "generic", "--manifest", "m.csv"]


def _usage_error(run_cli, capsys, args: list) -> str:
    """The one line of error of a command line refused as a usage error."""
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no usage block: `actprep run`'s is thirty lines
    return lines[0]


# ------------------------------------------------------------------------------ actprep run

def test_a_misspelt_run_option_names_the_nearest(run_cli, capsys, tmp_path):
    out = tmp_path / "o"
    line = _usage_error(run_cli, capsys, [*RUN, "--output", out, "--shard-sise", "10"])
    assert line == ("actprep run: error: unknown option --shard-sise (neither an actprep nor "
                    "a Beam option); did you mean --shard-size?")
    assert not out.exists()


@pytest.mark.parametrize("typo,meant", [
    ("--runer=DirectRunner", "--runner"),  # Beam's
    ("--num-workers=3", "--num_workers"),  # Beam takes no dashes: it would drop it
    ("--temp-location=gs://b/t", "--temp_location"),
    ("--shard_size=3", "--shard-size"),  # actprep takes no underscores
    ("--vggish-weight=w.pth", "--vggish-weights"),  # no abbreviations any more
])
def test_misspelt_actprep_and_beam_options(run_cli, capsys, tmp_path, typo, meant):
    line = _usage_error(run_cli, capsys, [*RUN, "--output", tmp_path / "o", typo])
    name = typo.split("=")[0]
    assert f"unknown option {name} " in line and line.endswith(f"did you mean {meant}?")


def test_a_misspelt_required_option_is_named_rather_than_missing(run_cli, capsys, tmp_path):
    line = _usage_error(run_cli, capsys, [*RUN, "--ouptut", tmp_path / "o"])
    assert "unknown option --ouptut" in line and "did you mean --output?" in line


def test_several_unknown_options_and_one_without_a_near_name(run_cli, capsys, tmp_path):
    line = _usage_error(run_cli, capsys, [*RUN, "--output", tmp_path / "o", "--runer=x",
                                          "--fps2", "5", "--zzzzzz"])
    assert ("unknown options --runer (did you mean --runner?), --fps2 (did you mean --fps?), "
            "--zzzzzz; neither actprep nor Beam options") in line


def test_beam_options_still_pass_through(tmp_path):
    beam = ["--runner=DirectRunner", "--direct_num_workers", "1", "--experiments=a",
            "--experiments", "b", "--no_use_public_ips", "--worker_machine_type=n1-standard-8",
            "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"]
    args, beam_args = cli.parse_command_line([*RUN, "--output", str(tmp_path), *beam])
    assert beam_args == beam and args.shard_size == 100
    opts = runargs.run_options(args)
    assert (opts.dataset, opts.manifest, opts.output) == ("generic", "m.csv", str(tmp_path))


def test_a_value_beam_refuses_and_a_stray_word(run_cli, capsys, tmp_path):
    assert run_cli([*RUN, "--output", tmp_path / "o", "--num_workers=many"]) == 2
    err = capsys.readouterr().err
    assert "actprep run: error: argument --num_workers: invalid int value: 'many'" in err
    assert run_cli([*RUN, "--output", tmp_path / "o", "stray"]) == 2
    assert "actprep run: error: unrecognized arguments: stray" in capsys.readouterr().err


@pytest.mark.parametrize("option,value,what", [
    ("--shard-size", "x", "a positive whole number"),
    ("--shard-size", "1.5", "a positive whole number"),
    ("--shard-size", "0", "a positive whole number"),
    ("--fps", "nan", "a positive number"),
    ("--fps", "inf", "a positive number"),
    ("--fps", "-2", "a positive number"),
])
def test_a_value_that_is_not_a_positive_number(run_cli, capsys, tmp_path, option, value, what):
    out = tmp_path / "o"
    assert run_cli([*RUN, "--output", out, f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"actprep run: error: argument {option}: expected {what}, got {value!r}")
    assert not out.exists()


def test_an_invalid_choice_names_the_nearest(run_cli, capsys, tmp_path):
    line = _usage_error(run_cli, capsys, ["run", "--dataset", "kinetcs", "--manifest", "m",
                                          "--output", tmp_path / "o"])
    assert line.startswith("actprep run: error: argument --dataset: invalid choice: 'kinetcs'")
    assert line.endswith("did you mean 'kinetics'?")
    line = _usage_error(run_cli, capsys, ["statz", "o"])
    assert line.startswith("actprep: error: argument command: invalid choice: 'statz'")
    assert line.endswith("did you mean 'stats'?")


# ---------------------------------------------------------------------- the other commands

@pytest.mark.parametrize("args,expected", [
    (["stats", "--htm", "x", "o"], "actprep stats: error: unknown option --htm; did you "
                                   "mean --html?"),
    (["stats", "o", "--jsn", "--htm=x"], "actprep stats: error: unknown options --jsn (did "
                                         "you mean --json?), --htm (did you mean --html?)"),
    (["verify", "o", "--no-decod"], "actprep verify: error: unknown option --no-decod; did "
                                    "you mean --no-decode?"),
    (["flow", "a.png", "b.png", "-o", "f.flo", "--backnd", "torch"],
     "actprep flow: error: unknown option --backnd; did you mean --backend?"),
    (["flow", "a.png", "b.png", "-o", "f.flo", "--backend", "opencvv"],
     "actprep flow: error: argument --backend: invalid choice: 'opencvv' (choose from "
     "'auto', 'torch', 'opencv'); did you mean 'opencv'?"),
    (["vggish-convert", "--weight", "w.pth"],  # before the missing --weights/--checkpoint
     "actprep vggish-convert: error: unknown option --weight; did you mean --weights?"),
    (["demo", "--outptu", "d"], "actprep demo: error: unknown option --outptu (neither an "
                                "actprep nor a Beam option); did you mean --output?"),
    (["stats", "o", "--zzzzzz"], "actprep stats: error: unknown option --zzzzzz; 'actprep "
                                 "stats --help' lists the options"),
    (["--verbos", "stats", "o"], "actprep stats: error: unknown option --verbos; 'actprep "
                                 "stats --help' lists the options"),
])
def test_misspelt_options_of_every_command(run_cli, capsys, args, expected):
    assert _usage_error(run_cli, capsys, args) == expected


def test_stray_words_keep_argparses_message(run_cli, capsys):
    assert run_cli(["verify", "o", "extra"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: actprep verify")
    assert err.endswith("actprep verify: error: unrecognized arguments: extra\n")


def test_console_script_exits_2_without_a_traceback():
    done = subprocess.run([sys.executable, "-m", "actprep.commands.cli", *RUN, "--output",
                           "o", "--shard-sise", "10"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "actprep run: error: unknown option --shard-sise (neither an actprep nor a Beam "
        "option); did you mean --shard-size?"]


# ------------------------------------------------------------------ the argparse surface

def test_run_option_list_describes_the_run_parser():
    parsed = vars(cli.parse_command_line([*RUN, "--output", "o"])[0])
    options = runargs.run_option_list()
    assert [o.option for o in options][:3] == ["--dataset", "--manifest", "--video-root"]
    assert {o.dest for o in options} <= set(parsed)
    assert all(o.kind in runargs.KINDS for o in options)
    by_option = {o.option: o for o in options}
    assert by_option["--shard-size"].kind == "positive_int"
    assert by_option["--mfcc-center"].kind == "bool"
    assert by_option["--no-wait"].is_flag and by_option["--no-wait"].default is True
    assert by_option["--dataset"].required and by_option["--dataset"].kind == "choice"
    assert by_option["--short-side"].exclusive_group == by_option["--size"].exclusive_group
    assert by_option["--size"].exclusive_group is not None
    for o in options:
        if not o.required:
            assert parsed[o.dest] == o.default, o.option


def _imports(path: str) -> list[tuple[str, str]]:
    """(module, name) of every import of a Python file; name "" for ``import module``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [(node.module or "", a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names]
    return found


def test_flex_uses_public_names_only():
    path = os.path.join(ROOT, "commands", "flex.py")
    assert not [(m, n) for m, n in _imports(path) if n.startswith("_")]
    tree = ast.parse(open(path, encoding="utf-8").read())
    private = {node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and not node.attr.startswith("__")}
    assert not private, private  # argparse's _actions, another module's _helpers


def test_pipelines_do_not_import_the_command_line():
    folder = os.path.join(ROOT, "pipelines")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            modules = {m for m, _ in _imports(os.path.join(folder, name))}
            assert not [m for m in modules if m.startswith("actprep.commands")], name
    # the options record is not the command line's argparse surface
    assert "argparse" not in {m for m, _ in _imports(os.path.join(folder, "options.py"))}


# ------------------------------------------------------- Beam's "apitools not found" warning

BLOCK_GCP = '''
import importlib.abc, sys

BLOCKED = %r


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Block())
'''
# what apache-beam[gcp] adds (apitools is what the warning is about)
GCP_MODULES = ("apitools", "google.cloud", "google.api_core", "google.auth",
               "google_auth_httplib2", "google.oauth2", "google.longrunning", "google.iam",
               "google.resumable_media", "google.type", "google.rpc", "google.api")


@pytest.fixture
def without_gcp(tmp_path) -> dict:
    """The environment of a process in which Beam's gcp extras are not installed (the test
    environment has them): a sitecustomize refuses their modules."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_GCP % (GCP_MODULES,))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _actprep(env: dict, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actprep.commands.cli", *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_the_cli_imports_beam_in_main_only():
    """main() imports Beam first, quietly: the CLI's own imports must not bring it in."""
    code = ("import sys; import actprep.commands.cli, actprep.commands.flex; "
            "print('apache_beam' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.strip() == "False"


def test_beam_warns_of_apitools_where_the_gcp_extras_are_missing(without_gcp):
    """The warning the next test keeps out: Beam logs it on import without the extras."""
    done = subprocess.run([sys.executable, "-c", "import apache_beam"], capture_output=True,
                          text=True, env=without_gcp, timeout=300)
    assert "apitools not found" in done.stderr, done.stderr


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["stats", "--help"],
                                  ["verify", "/nonexistent/output"], ["flow", "--help"]])
def test_commands_do_not_print_beams_apitools_warning(without_gcp, args):
    done = _actprep(without_gcp, *args)
    assert "apitools" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    if args == ["--version"]:
        assert done.returncode == 0 and done.stdout.startswith("actprep ")


def test_a_local_run_does_not_print_it_and_gs_paths_say_what_is_missing(without_gcp,
                                                                       tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\nmissing.mp4,a\n")
    done = _actprep(without_gcp, *RUN[:3], "--manifest", str(manifest), "--output",
                    str(tmp_path / "out"), "--no-progress", "--modalities", "rgb")
    assert "apitools" not in done.stderr, done.stderr
    assert "1 failed (of 1 manifest rows)" in done.stderr, done.stderr
    done = _actprep(without_gcp, *RUN[:3], "--manifest", "gs://bucket/list.csv", "--output",
                    "gs://bucket/out")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "actprep: error: --manifest gs://bucket/list.csv: this installation cannot open "
        "gs:// paths: they need Beam's Google Cloud extras, pip install 'actprep[gcp]'"]


@pytest.mark.parametrize("command", ["stats", "verify"])
def test_reports_on_gs_paths_say_what_is_missing(without_gcp, command):
    done = _actprep(without_gcp, command, "gs://bucket/out")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"actprep {command}: error: gs://bucket/out: this installation cannot open gs:// "
        "paths: they need Beam's Google Cloud extras, pip install 'actprep[gcp]'"]
