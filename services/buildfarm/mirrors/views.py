"""3rd-party mirrors as the CLI and the API see them: what is configured, what builds can use, sync.

The configuration (setting ``mirrors``) says which mirrors exist; the repository backend says
which of them builds can use now (on Pulp: synced at least once) and does the sync.  The REST API
(and through it the local CLI, which needs no running farm for them) calls these two functions.
"""

from __future__ import annotations

from buildfarm.backends.base import PackageRepository
from buildfarm.model.mirrors import find_mirror
from buildfarm.model.settinggroups import MirrorSettings
from buildfarm_client.models import MirrorOut, MirrorSyncOut


def list_mirrors(settings: MirrorSettings, repo: PackageRepository) -> list[MirrorOut]:
    """The configured mirrors; ``source`` is a mirror's apt line once builds can use it, else None."""
    usable = repo.usable_mirrors() if settings.repositories else {}
    return [
        MirrorOut(
            name=mirror.name,
            url=mirror.url,
            distribution=mirror.distribution,
            components=list(mirror.components),
            architectures=list(mirror.architectures),
            source=usable[mirror.name].line() if mirror.name in usable else None,
        )
        for mirror in settings.repositories
    ]


def sync_mirror(settings: MirrorSettings, repo: PackageRepository, name: str) -> MirrorSyncOut:
    """Sync the configured mirror ``name`` (NotFoundError if there is none); waits are bounded."""
    return repo.sync_mirror(find_mirror(settings.repositories, name))
