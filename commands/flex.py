"""The Dataflow Flex Template of ``actprep run``.

Two halves, both derived from the options of the real ``actprep run`` command line
(:func:`actprep.commands.runargs.run_option_list`), so the template cannot drift from it:

* :func:`template_metadata` builds the template's ``metadata.json``: one parameter per run
  option, named like the option with underscores (``--video-root`` -> ``video_root``), with
  the option's help text, ``isOptional`` from ``required``, and regexes where the value has a
  fixed shape (choices, numbers, booleans, WxH, modalities, gs:// paths).
  ``python -m actprep.commands.flex --metadata`` prints it; the committed
  ``deploy/flex-template/metadata.json`` is checked against it by the tests.
* :func:`run_arguments` turns what the Flex Template launcher passes to the program
  (``--name=value`` for every template parameter given, plus Beam/Dataflow options such as
  ``--project``, ``--region``, ``--temp_location``, ``--sdk_container_image``) back into an
  ``actprep run`` command line: parameter names become the option strings again, booleans
  given as ``--flow_raw=true`` become the flag (or nothing), and every other ``--name``
  passes through to Beam untouched, where actprep's CLI still rejects a name that is neither
  an actprep nor a Beam option.

:func:`main` (``deploy/flex_main.py``, the ``FLEX_TEMPLATE_PYTHON_PY_FILE`` of the image) runs
``actprep -v run ...`` with template defaults: the DataflowRunner unless a runner is given,
no progress display unless ``no_progress=false`` is given, and ``--no-wait`` (the launcher
submits and exits) unless ``no_wait=false`` is given.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass

from actprep.commands import runargs
from actprep.commands.runargs import FALSE_WORDS, TRUE_WORDS, RunOption, run_option_list
from actprep.pipelines.options import MODALITIES

TEMPLATE_NAME = "actprep"
TEMPLATE_DESCRIPTION = (
    "Action-recognition videos (Kinetics, Moments in Time or any labelled list) to "
    "training-ready WebDataset shards: RGB frames, TV-L1 optical flow (on the workers' GPUs), "
    "MFCC and VGGish audio features, labels and a Parquet index of every video. Every "
    "parameter is an option of 'actprep run' (underscores for dashes); rerunning a job with "
    "the same parameters resumes it.")

# Paths the launcher and the workers read or write: on Dataflow they must be in Cloud Storage
# (a local path would name a file on one VM). --vggish-hub may also be a tfhub.dev address.
GCS_PATHS = {
    "manifest": "GCS_READ_FILE",
    "video_root": "GCS_READ_FOLDER",
    "output": "GCS_WRITE_FOLDER",
    "classes": "GCS_READ_FILE",
    "vggish_weights": "GCS_READ_FILE",
    "vggish_pca": "GCS_READ_FILE",
}
GCS_REGEX = r"^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/.*)?$"

INT_REGEX = r"^[-+]?[0-9]+$"
POSITIVE_INT_REGEX = r"^[+]?0*[1-9][0-9]*$"
FLOAT_REGEX = r"^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
SIZE_REGEX = r"^[0-9]+[xX][0-9]+$"


class FlexArgumentError(ValueError):
    """A template parameter the launcher passed cannot become an ``actprep run`` option."""


@dataclass(frozen=True)
class Parameter:
    """One template parameter and the ``actprep run`` option it stands for."""

    name: str  # template name: video_root
    spec: RunOption  # the option: spec.option is its string, --video-root

    @property
    def option(self) -> str:
        """The actprep option string: --video-root."""
        return self.spec.option

    @property
    def is_flag(self) -> bool:
        """A switch without a value (--flow-raw, --no-progress): true or false in a template."""
        return self.spec.is_flag

    @property
    def required(self) -> bool:
        return self.spec.required


def template_name(option: str) -> str:
    """``--video-root`` -> ``video_root``."""
    return option.lstrip("-").replace("-", "_")


def parameters(options: list[RunOption] | None = None) -> dict[str, Parameter]:
    """The template parameters by name, in the order of ``actprep run --help``."""
    found: dict[str, Parameter] = {}
    for spec in run_option_list() if options is None else options:
        name = template_name(spec.option)
        if name in found:
            raise ValueError(f"two run options map to the template parameter {name}")
        found[name] = Parameter(name, spec)
    return found


# ---------------------------------------------------------------------------------- metadata

_LABEL_WORDS = {"vggish": "VGGish", "fps": "FPS", "jpeg": "JPEG", "pca": "PCA"}


def _label(name: str) -> str:
    """``video_root`` -> "Video root"; MFCC options keep librosa's parameter name."""
    if name.startswith("mfcc_"):
        return "MFCC " + name[len("mfcc_"):]
    text = " ".join(_LABEL_WORDS.get(w, w) for w in name.split("_"))
    return text[0].upper() + text[1:]


def _help(param: Parameter) -> str:
    """The option's own help text, as ``actprep run --help`` prints it; an option without
    one is described by its choices and default."""
    spec = param.spec
    text = spec.help
    if not text:
        if spec.kind == "choice":
            text = "one of " + ", ".join(map(str, spec.choices))
        else:
            text = param.option
        if spec.default is not None:
            text += f" (default {spec.default})"
    return text


def _alternatives(words) -> str:
    return "^(" + "|".join(re.escape(str(w)) for w in words) + ")$"


def _bool_regex() -> str:
    words = []
    for word in TRUE_WORDS + FALSE_WORDS:
        words += dict.fromkeys([word, word.capitalize(), word.upper()])
    return _alternatives(words)


def _shape(param: Parameter) -> tuple[str, list[str], list[dict]]:
    """(paramType, regexes, enumOptions) of a parameter."""
    spec, kind = param.spec, param.spec.kind
    if kind in ("flag", "bool"):
        # a flag's default is false; --mfcc-center's is true, so it stays TEXT (the console
        # would otherwise offer false as the prefilled value)
        return ("BOOLEAN" if param.is_flag else "TEXT"), [_bool_regex()], []
    if param.name in GCS_PATHS:
        return GCS_PATHS[param.name], [GCS_REGEX], []
    if kind == "choice":
        # the default first: a console that preselects the first option keeps the default
        ordered = sorted(spec.choices, key=lambda c: c != spec.default)
        return "ENUM", [_alternatives(ordered)], [{"value": str(c), "label": str(c)}
                                                  for c in ordered]
    if kind == "modalities":
        one = "(" + "|".join(MODALITIES) + ")"
        return "TEXT", [rf"^ *{one}( *, *{one})* *$"], []
    if kind == "size":
        return "TEXT", [SIZE_REGEX], []
    # numbers stay TEXT: a console prefilling 0 into an empty NUMBER field would change the
    # run; the regex still checks the shape
    if kind == "int":
        return "TEXT", [INT_REGEX], []
    if kind == "positive_int":
        return "TEXT", [POSITIVE_INT_REGEX], []
    if kind in ("float", "positive_float", "fraction"):
        return "TEXT", [FLOAT_REGEX], []
    return "TEXT", [], []


def parameter_metadata(param: Parameter) -> dict:
    param_type, regexes, enum_options = _shape(param)
    entry = {"name": param.name, "label": _label(param.name), "helpText": _help(param),
             "isOptional": not param.required, "paramType": param_type}
    if regexes:
        entry["regexes"] = regexes
    if enum_options:
        entry["enumOptions"] = enum_options
    return entry


def template_metadata() -> dict:
    """The Flex Template metadata (``gcloud dataflow flex-template build --metadata-file``)."""
    return {"name": TEMPLATE_NAME, "description": TEMPLATE_DESCRIPTION,
            "parameters": [parameter_metadata(p) for p in parameters().values()]}


def metadata_json() -> str:
    return json.dumps(template_metadata(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------ launch args

def parse_bool(name: str, value: str) -> bool:
    """A boolean template parameter's value; the error names the parameter."""
    try:
        return runargs.parse_bool(value.strip())
    except argparse.ArgumentTypeError:
        raise FlexArgumentError(f"template parameter {name}: expected true or false, got "
                                f"{value!r}") from None


def run_arguments(argv: list[str]) -> list[str]:
    """The ``actprep run`` arguments for what the Flex Template launcher passed: template
    parameters become actprep options, everything else passes through to Beam in order.

    An empty value of an optional parameter counts as not given (a console form sends empty
    fields); a flag without a value (``--flow_raw``) means true."""
    params = parameters()
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        param = params.get(name.replace("-", "_"))
        if param is None:  # a Beam or Dataflow option, checked by the CLI
            out.append(arg)
            continue
        if param.is_flag:
            if parse_bool(param.name, value if has_value else "true"):
                out.append(param.option)
            continue
        if not has_value:  # --name value
            if i >= len(args) or args[i].startswith("--"):
                raise FlexArgumentError(f"template parameter {param.name}: no value given")
            value = args[i]
            i += 1
        if value == "" and not param.required:
            continue
        out.append(f"{param.option}={value}")
    return out


def _given(argv: list[str], name: str) -> bool:
    return any(a[2:].partition("=")[0].replace("-", "_") == name
               for a in argv if a.startswith("--"))


def launch_arguments(argv: list[str]) -> list[str]:
    """The whole ``actprep`` command line a template launch runs: ``-v run`` (Beam's job
    submission messages go to the launcher's log), the translated arguments, then the
    template defaults: the DataflowRunner unless a runner is given, and ``--no-progress``
    and ``--no-wait`` unless their parameters are given (Dataflow expects a template's
    program to exit once the job is submitted)."""
    args = run_arguments(argv)
    if not _given(argv, "runner"):
        args.append("--runner=DataflowRunner")
    if not _given(argv, "no_progress"):
        args.append("--no-progress")
    if not _given(argv, "no_wait"):  # a template launcher submits and exits
        args.append("--no-wait")
    return ["-v", "run", *args]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--metadata"]:
        sys.stdout.write(metadata_json())
        return 0
    try:
        command = launch_arguments(argv)
    except FlexArgumentError as exc:
        print(f"actprep flex template: error: {exc}", file=sys.stderr)
        return 2
    from actprep.commands import cli

    print("actprep flex template: actprep " + " ".join(command), file=sys.stderr, flush=True)
    return cli.main(command)


def entry() -> None:
    """Entry of the template's Python file: ends the process like the console script."""
    from actprep.commands.cli import exit_now

    exit_now(main())


if __name__ == "__main__":
    entry()
