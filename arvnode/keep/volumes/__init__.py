"""Volume backends and the one factory that picks them from config.

The wiring code reads ``Volumes.<uuid>`` entries of the Arvados-shaped config
and calls :func:`build_volume` for each; nothing else needs to know which
drivers exist. Only ``Directory`` is built so far (S3 and upstream keepstores
come later); any other driver is refused by name at start-up rather than
ignored, so a config that relies on it cannot silently lose a volume.
"""
from __future__ import annotations

import random
from typing import Iterable, Mapping, Protocol

from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

from arvnode.keep.trash import TrashPolicy
from arvnode.keep.volume import IVolume
from arvnode.keep.volumes.directory import DirectoryVolume

__all__ = ["DirectoryVolume", "VolumeConfig", "build_volume"]


class VolumeConfig(Protocol):
    """What :func:`build_volume` reads from one ``Volumes.<uuid>`` entry."""

    @property
    def driver(self) -> str: ...

    @property
    def driver_parameters(self) -> Mapping[str, object]: ...

    @property
    def replication(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def storage_classes(self) -> Mapping[str, object] | Iterable[str]: ...


def _storage_classes(value: Mapping[str, object] | Iterable[str] | None) -> tuple[str, ...]:
    """Arvados writes ``StorageClasses: {name: true}``; a plain list is taken too.

    An empty set means ``default``, as in Arvados.
    """
    if value is None:
        names: tuple[str, ...] = ()
    elif isinstance(value, Mapping):
        names = tuple(sorted(str(k) for k, v in value.items() if v))
    elif isinstance(value, str):
        names = (value,)
    else:
        names = tuple(str(v) for v in value)
    return names or ("default",)


def build_volume(
    uuid: str,
    volume_config: VolumeConfig,
    *,
    reactor: IReactorFromThreads,
    threadpool: ThreadPool,
    rng: random.Random,
    commit_threadpool: ThreadPool | None = None,
    trash_policy: TrashPolicy | None = None,
) -> IVolume:
    """Build the (not yet started) volume ``uuid`` described by ``volume_config``.

    Raises :class:`ValueError` naming the problem for an unknown driver or a
    missing/invalid driver parameter. ``trash_policy`` (from
    ``Collections.BlobTrash*``; default Arvados' defaults) governs
    ``trash``/``empty_trash``.
    """
    driver = volume_config.driver
    if driver == "Directory":
        params = volume_config.driver_parameters or {}
        root = params.get("Root")
        if not isinstance(root, str) or not root:
            raise ValueError(
                f"Volumes.{uuid}.DriverParameters.Root: expected a directory path, got {root!r}"
            )
        return DirectoryVolume(
            uuid,
            root,
            reactor=reactor,
            threadpool=threadpool,
            replication=int(volume_config.replication or 1),
            read_only=bool(volume_config.read_only),
            storage_classes=_storage_classes(volume_config.storage_classes),
            rng=rng,
            commit_threadpool=commit_threadpool,
            trash_policy=trash_policy,
        )
    if driver == "S3":
        # Imported here: botocore is only loaded by nodes with S3 volumes.
        from arvnode.keep.volumes.s3 import S3Volume
        from arvnode.keep.volumes.s3_params import S3ParameterError, parse_s3_parameters

        try:
            s3_params = parse_s3_parameters(volume_config.driver_parameters)
        except S3ParameterError as e:
            raise ValueError(f"Volumes.{uuid}.DriverParameters: {e}") from None
        volume = S3Volume(
            uuid,
            s3_params,
            reactor=reactor,
            clock=reactor,  # type: ignore[arg-type]
            rng=rng,
            replication=int(volume_config.replication or 1),
            read_only=bool(volume_config.read_only),
            storage_classes=_storage_classes(volume_config.storage_classes),
            threadpool=threadpool,
        )
        volume.trash_policy = trash_policy
        return volume
    raise ValueError(f"Volumes.{uuid}.Driver: unsupported volume driver {driver!r}")
