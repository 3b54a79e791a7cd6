"""What Redis does to keep the queue across a restart: AOF, RDB snapshots, or nothing.

Without either, a restart empties `toWorker` and every queued job is gone (runners then report the loss: see
docs/reliability.md). `CONFIG GET` is read where it is allowed; managed services that rename CONFIG still answer
`INFO persistence`, which tells AOF (not the RDB schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Persistence:
    aof: bool | None  # appendonly; None when it could not be read
    rdb_save: str | None  # the `save` schedule ("" = no snapshots); None when it could not be read

    @property
    def none(self) -> bool:
        """Known to keep nothing across a restart."""
        return self.aof is False and self.rdb_save == ""

    def describe(self) -> str:
        parts = []
        if self.aof is not None:
            parts.append("AOF on" if self.aof else "AOF off")
        if self.rdb_save is not None:
            parts.append(f"RDB save {self.rdb_save!r}" if self.rdb_save else "RDB off")
        if not parts:
            return "unknown (CONFIG and INFO persistence not allowed)"
        if self.none:
            return "none: a Redis restart loses every queued job (set appendonly yes)"
        return ", ".join(parts)


def read_persistence(client: redis.Redis) -> Persistence:
    """Redis's persistence settings, as far as this client may read them."""
    aof: bool | None = None
    save: str | None = None
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("save"))
        text = {_s(k): _s(v) for k, v in config.items()}
        aof = text.get("appendonly") == "yes" if "appendonly" in text else None
        save = text.get("save")
    except redis.ResponseError:
        try:
            info = client.info("persistence")
            aof = bool(int(info["aof_enabled"])) if "aof_enabled" in info else None
        except redis.ResponseError:
            pass
    return Persistence(aof=aof, rdb_save=save)


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
