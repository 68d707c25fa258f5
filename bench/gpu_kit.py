"""The GPU check's wheel kit (issue 27): what the lent GPU machine lacks, downloaded here, carried there.

The lent machine (/work/.library/device/KINDS.md) is offline and runs its own Python 3.12 with torch 2.11
(CUDA 13), transformers 5.17, accelerate, peft, safetensors, tokenizers, pyarrow, sacrebleu, httpx, triton,
but not trl, liger-kernel, datasets, openai, rapidfuzz or gguf. This script, run HERE (where the registries
are reachable), downloads the pinned wheels of exactly those missing packages and their missing dependencies
into an ignored folder (``.whl/``, ``--no-deps``, binary only), checks that every requirement of every wheel
is met by the kit or the image, that the kit plus the working tree fit the 64 MiB a call carries, and prints
the one call to make there (``bench/gpu_device.sh``: install with ``--no-index --no-deps --target``, src/ on
PYTHONPATH, ``bench/gpu.py`` inside an 8-minute budget, results to $OUT).

    .venv/bin/python bench/gpu_kit.py                          # cp312 manylinux x86-64 kit in .whl/
    .venv/bin/python bench/gpu_kit.py --python-version 3.11 --dest /tmp/kit311 --image-pins
        # the dry run's kit for this machine's Python, plus the image's transformers/accelerate/hub/tokenizers

Exit status 0 when the kit is complete and fits; 1 (one line naming what and why) otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # bytes: the working tree plus the carried folders, per call
DEVICE_TIMEOUT_S = 560  # the call's timeout_s: bench/gpu_device.sh ends inside it (gpu.py's budget is 450 s)

#: what the lent image lacks and the GPU check (or ``import unipo`` and its lazy imports) needs, pinned to
#: the versions tested together on the CPU here (torch 2.13, transformers 5.17 and 5.25)
KIT = {
    "trl": "1.16.0",
    "liger-kernel": "0.8.5",
    "datasets": "5.2.0",
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
    "rapidfuzz": "3.14.6",
    "gguf": "0.19.0",
    "openai": "3.63.0",
    "httpx2": "2.17.0",
    "httpcore2": "2.17.0",
    "truststore": "0.10.5",
    "jiter": "0.19.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "sniffio": "1.3.1",
    "distro": "1.9.0",
}

#: the versions the lent image holds where they matter (KINDS.md's pip list, 2026-11): ``--image-pins``
#: downloads these too, so that a dry run here imports the image's transformers, not this venv's
IMAGE_PINS = {
    "transformers": "5.17.0",
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
}

#: the Python packages of the lent image ('cuda'), as KINDS.md lists them (read on a machine 2026-11-17)
IMAGE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def norm(name: str) -> str:
    """A distribution name as PEP 503 normalises it (``Typing_Extensions`` → ``typing-extensions``)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


# --------------------------------------------------------------------------------------------- download
def download(dest: Path, pins: dict[str, str], python_version: str) -> None:
    """``pip download --no-deps --only-binary=:all:`` of ``pins`` for CPython ``python_version`` on manylinux
    x86-64 into ``dest``; wheels of other names or versions already there are removed first (two versions of
    one package stop the whole install there)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {norm(k): v for k, v in pins.items()}
    for old in dest.glob("*.whl"):
        if wanted.get(wheel_name(old)) != old.name.split("-")[1]:
            old.unlink()
    missing = [f"{k}=={v}" for k, v in pins.items() if not _have(dest, k, v)]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "--progress-bar", "off", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    proc = subprocess.run(cmd + missing, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-1:]
        raise KitError(f"pip download of {', '.join(missing)} for cp{python_version.replace('.', '')} failed: "
                       f"{' '.join(last)[:400]} (the registries must be reachable, or the wheels already in {dest})")


def _have(dest: Path, name: str, version: str) -> bool:
    return any(wheel_name(p) == norm(name) and p.name.split("-")[1] == version for p in dest.glob("*.whl"))


class KitError(Exception):
    """The kit cannot be built or is incomplete: one line, what and why."""


# ------------------------------------------------------------------------------------------------ checks
def requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]


def unmet(dest: Path, python_version: str, image: frozenset[str] = IMAGE_HAS) -> list[str]:
    """Requirements of the kit's wheels (markers evaluated for that Python on Linux x86-64, no extras) that
    neither the kit nor the image provides, and kit versions outside a kit wheel's specifier."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    kit = {wheel_name(p): p.name.split("-")[1] for p in dest.glob("*.whl")}
    problems = []
    for wheel in sorted(dest.glob("*.whl")):
        for line in requirements(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = norm(req.name)
            if name in kit:
                if req.specifier and not req.specifier.contains(kit[name], prereleases=True):
                    problems.append(f"{wheel.name} needs {line}, the kit has {name} {kit[name]}")
            elif name not in image:
                problems.append(f"{wheel.name} needs {line}: neither in the kit nor on the image")
    return problems


def installed_unmet(dest: Path) -> list[str]:
    """Run THERE (bench/gpu.py --kit): each kit wheel's package at another version than the wheel's, and each
    of its requirements (markers evaluated for this interpreter) that the installed packages do not meet."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    problems = []
    for wheel in sorted(dest.glob("*.whl")):
        have = installed(wheel_name(wheel))
        if have != wheel.name.split("-")[1]:
            problems.append(f"{wheel_name(wheel)}: {have} installed, the kit has {wheel.name.split('-')[1]}")
        for line in requirements(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            got = installed(req.name)
            if got is None or (req.specifier and not req.specifier.contains(got, prereleases=True)):
                problems.append(f"{wheel.name} needs {line}; installed: {got}")
    return problems


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what a call sends besides the carried folders: tracked files and untracked, not ignored ones."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sum((root / f).stat().st_size for f in out.decode().split("\0") if f and (root / f).is_file())


def kit_bytes(dest: Path) -> int:
    return sum(p.stat().st_size for p in dest.glob("*.whl"))


# -------------------------------------------------------------------------------------------------- main
def device_call(dest_rel: str) -> str:
    """The call to make on the lent machine (the ``run`` tool's arguments). No ``kind``: the tool starts an
    H100 and falls back to an H200 when none opens; the parts are sized for the H100, and the JSON names the GPU."""
    return f'run(command="bash bench/gpu_device.sh", carry=["{dest_rel}"], timeout_s={DEVICE_TIMEOUT_S})'


def build(dest: Path, python_version: str, image_pins: bool) -> dict:
    pins = dict(KIT, **(IMAGE_PINS if image_pins else {}))
    download(dest, pins, python_version)
    got = {wheel_name(p) for p in dest.glob("*.whl")}
    absent = sorted(norm(k) for k in pins if norm(k) not in got)
    if absent:
        raise KitError(f"{dest}: no wheel for {', '.join(absent)} after the download")
    problems = unmet(dest, python_version)
    if problems:
        raise KitError(f"{dest}: unmet requirements: {'; '.join(problems)}")
    return {"wheels": len(got), "kit_bytes": kit_bytes(dest), "tree_bytes": tree_bytes()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl", help="the folder of wheels (default .whl, ignored)")
    ap.add_argument("--python-version", default="3.12", help="the target CPython (3.12 on the lent machine)")
    ap.add_argument("--image-pins", action="store_true",
                    help="also the image's transformers, accelerate, huggingface-hub, tokenizers, safetensors "
                         "(for a dry run here that imports those versions)")
    args = ap.parse_args(argv)
    try:
        info = build(args.dest, args.python_version, args.image_pins)
    except KitError as exc:
        print(f"bench/gpu_kit.py: {exc}", file=sys.stderr)
        return 1
    total = info["kit_bytes"] + info["tree_bytes"]
    mib = 2**20
    print(f"kit: {info['wheels']} wheels, {info['kit_bytes'] / mib:.1f} MiB in {args.dest}; working tree "
          f"{info['tree_bytes'] / mib:.1f} MiB; together {total / mib:.1f} MiB of the {CARRY_LIMIT // mib} MiB "
          "a call carries")
    if total > CARRY_LIMIT:
        print(f"bench/gpu_kit.py: {total / mib:.1f} MiB is over the {CARRY_LIMIT // mib} MiB a call carries: "
              "drop a wheel from KIT or untracked files from the tree", file=sys.stderr)
        return 1
    try:
        rel = str(args.dest.resolve().relative_to(ROOT))
    except ValueError:
        rel = str(args.dest)
    if args.python_version == "3.12" and not args.image_pins:
        print("the call, when a GPU is lent (bench/README.md):")
        print(device_call(rel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
