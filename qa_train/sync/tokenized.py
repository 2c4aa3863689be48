"""The run's tokenized-data cache in object storage: ``<run>/tokenized/<key>/`` (``tokenized.npz`` +
``key.json``, committed by ``_manifest.json`` like a checkpoint).

Why: a relaunch on a fresh machine would otherwise re-tokenize the whole data set before its first step. The
key is ``qa_train.data.tokenize.cache_key`` (content-addressed), so any relaunch of the same run with the same
data, tokenizer, template and length settings finds it. Everything here is an optimization: a missing, partial or
corrupt copy, or storage that fails, costs a warning and a local tokenization, never the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from qa_train.contract import TOKENIZED
from qa_train.storage import S3Location, StorageError, describe_error, list_keys

from .manifest import MANIFEST_NAME, ManifestError

logger = logging.getLogger("qa_train.sync")
DATA_NAME = "tokenized.npz"
KEY_NAME = "key.json"


def _why(exc: BaseException, loc: S3Location, endpoint_url: str | None) -> str:
    return (
        str(exc) if isinstance(exc, StorageError | ManifestError) else describe_error(exc, loc, endpoint_url)
    )


class RemoteTokenCache:
    """``fetch`` / ``has`` / ``publish`` one cache key under a run (rank 0 only; see ``load_tokenized``)."""

    def __init__(
        self, client: Any, run: S3Location, endpoint_url: str | None = None, *, progress: bool = True
    ) -> None:
        self.client = client
        self.run = run
        self.endpoint_url = endpoint_url
        self.progress = progress

    def location(self, key: str) -> S3Location:
        return self.run.child(TOKENIZED, key)

    def has(self, key: str) -> bool:
        """Committed: manifest present and every file it lists there with its size (one listing)."""
        from .transfer import read_manifest

        loc = self.location(key)
        try:
            keys = list_keys(self.client, loc.bucket, loc.dir_prefix)
            if loc.key(MANIFEST_NAME) not in keys:
                return False
            manifest = read_manifest(self.client, loc)
        except Exception as exc:  # noqa: BLE001 - storage trouble: "not there", publish will say more
            logger.warning(
                "Cannot check the remote tokenized cache %s: %s", loc.uri, _why(exc, loc, self.endpoint_url)
            )
            return False
        return all(keys.get(loc.key(f.path)) == f.size for f in manifest.files)

    def fetch(self, key: str, dest: Path) -> bool:
        """Download and verify (sizes + sha256 from the manifest) into ``dest``; False, with a warning when a
        copy was there but unusable, when there is nothing to use."""
        from .transfer import pull_directory

        loc = self.location(key)
        tmp = dest.parent / f".{key}.remote-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if not list_keys(self.client, loc.bucket, loc.dir_prefix):
                logger.info("No remote tokenized cache at %s: tokenizing", loc.uri)
                return False
            manifest = pull_directory(
                self.client, loc, tmp, progress=self.progress, endpoint_url=self.endpoint_url
            )
            stored = json.loads((tmp / KEY_NAME).read_text()).get("key")
            if stored != key or not (tmp / DATA_NAME).is_file():
                raise StorageError(f"{loc.uri}: {KEY_NAME} names key {stored!r}, expected {key!r}")
            os.replace(tmp / DATA_NAME, dest)
        except Exception as exc:  # noqa: BLE001 - corrupt, partial, unreachable: all mean "tokenize here"
            logger.warning(
                "Ignoring the remote tokenized cache %s (%s): tokenizing again",
                loc.uri,
                _why(exc, loc, self.endpoint_url),
            )
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "Downloaded tokenized data from %s (%.1f MB, verified): not tokenizing",
            loc.uri,
            manifest.total_bytes / 1e6,
        )
        return True

    def publish(self, key: str, path: Path, identity: dict[str, Any]) -> bool:
        """Upload ``path`` as ``tokenized.npz`` + ``key.json``, manifest last (replacing any copy there)."""
        from .transfer import push_directory

        loc = self.location(key)
        stage = path.parent / f".{key}.publish-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            stage.mkdir(parents=True)
            try:
                os.link(path, stage / DATA_NAME)  # no copy of a large file
            except OSError:
                shutil.copy2(path, stage / DATA_NAME)
            body = (json.dumps({"key": key, **identity}, indent=1, sort_keys=True) + "\n").encode()
            push_directory(
                self.client,
                stage,
                loc,
                progress=self.progress,
                endpoint_url=self.endpoint_url,
                extra_files={KEY_NAME: body},
            )
        except Exception as exc:  # noqa: BLE001 - a relaunch will tokenize; the run goes on
            logger.warning(
                "Could not upload the tokenized cache to %s (%s): a relaunch will tokenize again",
                loc.uri,
                _why(exc, loc, self.endpoint_url),
            )
            return False
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        logger.info("Uploaded tokenized data to %s (%.1f MB)", loc.uri, path.stat().st_size / 1e6)
        return True
