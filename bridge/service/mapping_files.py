"""Where mapping files come from: a folder on disk (the loader itself does no I/O)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import MappingFileError, MappingIssue
from ..mapping.engine import Engine
from ..mapping.loader import LoadResult, MappingText, load_texts


def mapping_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def read_directory(directory: Path) -> list[MappingText]:
    """Every ``*.yaml``/``*.yml`` file of the folder (not subfolders), in name order."""
    if not directory.is_dir():
        raise MappingFileError(
            [MappingIssue(str(directory), None, "", "is not a directory of mapping files")]
        )
    sources = []
    for path in mapping_files(directory):
        try:
            sources.append(MappingText(str(path), path.read_bytes()))
        except OSError as exc:
            raise MappingFileError(
                [MappingIssue(str(path), None, "", f"cannot be read: {exc.strerror}")]
            ) from exc
    return sources


def load_directory(directory: Path | str, *, strict: bool = True) -> LoadResult:
    """Read, check and compile the mapping files of a folder."""
    directory = Path(directory)
    try:
        sources = read_directory(directory)
    except MappingFileError as exc:
        if strict:
            raise
        return LoadResult(Engine([]), list(exc.issues), [])
    return load_texts(sources, strict=strict, where=str(directory))
