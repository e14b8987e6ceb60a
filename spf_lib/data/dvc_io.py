"""DVC I/O: read the `data` folder at a git revision of a data repository, and the lineage it leaves beside it.

Endpoints and credentials never appear in code: an S3 endpoint comes from the repo's DVC config, from
``remote_config`` passed by the caller (who reads it from configuration) or from ``SPF_DVC_ENDPOINT_URL``; keys come
from the standard AWS_* environment variables or ``.dvc/config.local``, read by DVC/boto itself. Versioning a folder
as `data` (the writing side) is ``spf_lib.data.dvc_versioning``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.data.dvc_guard import git_credentials, one_line, quiet_dvc, refuse_credentials_in_url, scrubbed
from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

DATA_OUT = "data"
DATA_REF_FILE = ".spf_data_ref.json"  # beside the pulled files; prepare reads it into its lineage


@dataclass(frozen=True)
class DataRef:
    rev: str  # full git commit sha the revision resolved to
    data_hash: str  # DVC md5 of the `data` output (from data.dvc at that rev), e.g. "0f3e...dir"
    path: Path  # local folder holding the content of `data`


def _remote_config_from_env(remote_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``SPF_DVC_REMOTE_URL`` / ``SPF_DVC_ENDPOINT_URL`` override the URL / endpoint of the remote in use: a cluster
    reads the same revision from its own store (the committed default remote is a laptop folder, and
    ``.dvc/config.local`` never travels with a clone)."""
    for env, key in (("SPF_DVC_REMOTE_URL", "url"), ("SPF_DVC_ENDPOINT_URL", "endpointurl")):
        value = os.environ.get(env, "").strip()
        if value and not (remote_config or {}).get(key):
            remote_config = {**(remote_config or {}), key: value}
    return remote_config


def data_hash_from_dvcfile(text: str, source: str) -> tuple[str, int | None]:
    """(md5, nfiles) of the single `data` output described by a .dvc file's YAML text."""
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
        out = next(o for o in doc.get("outs", []) if o.get("path") == DATA_OUT)
        return str(out["md5"]), out.get("nfiles")
    except (yaml.YAMLError, StopIteration, KeyError, AttributeError, TypeError) as e:
        raise SpfError(f"{source}: no 'outs' entry with path '{DATA_OUT}' and an md5") from e


@scrubbed
def pull_data(repo: str, rev: str, out_dir: str | Path, *, remote: str | None = None,
              remote_config: dict[str, Any] | None = None) -> DataRef:
    """Copy `data` at ``rev`` of ``repo`` (git URL or path) into ``out_dir``, fetching from the DVC remote.

    A private repository's credentials come from the environment (``git_credentials``), never from ``repo``."""
    quiet_dvc()
    if not rev or not rev.strip():
        raise SpfError("--rev: a git revision is required (commit, tag or branch)")
    refuse_credentials_in_url(repo, "--repo")
    with git_credentials(repo) as (clone_url, redact):
        return _pull(repo, clone_url, redact, rev, Path(out_dir), remote, _remote_config_from_env(remote_config))


def _pull(repo: str, clone_url: str, redact, rev: str, out_dir: Path, remote: str | None,
          remote_config: dict[str, Any] | None) -> DataRef:
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    from spf_lib.io import atomic_dir, write_json_atomic

    try:
        fs = DVCFileSystem(repo=clone_url, rev=rev, remote=remote, remote_config=remote_config)
        try:
            resolved = fs.repo.get_rev()
            if not fs.exists("data.dvc"):
                raise SpfError(f"--repo {repo} @ {rev}: no data.dvc at this revision")
            md5, nfiles = data_hash_from_dvcfile(fs.read_text("data.dvc"), f"{repo}@{rev}:data.dvc")
            with atomic_dir(out_dir, owned_if=(DATA_REF_FILE,), write_marker=False) as tmp:
                staging = tmp / ".payload"  # fsspec copies a folder's content only into a path that does not exist
                fs.get(DATA_OUT, str(staging), recursive=True)
                for child in staging.iterdir():
                    child.rename(tmp / child.name)
                staging.rmdir()
                got = sum(1 for p in tmp.rglob("*") if p.is_file())
                if nfiles is not None and got != nfiles:
                    raise SpfError(f"{repo}@{rev}: data.dvc says {nfiles} files, fetched {got}")
                write_json_atomic(tmp / DATA_REF_FILE, {"data_rev": resolved, "data_hash": md5, "repo": repo})
        finally:
            fs.close()
    except SpfError:
        raise
    except (DvcException, SCMError) as e:
        raise SpfError(redact(f"--repo {repo} @ {rev}: {type(e).__name__}: {one_line(e)}")) from None
    except Exception as e:  # dvc_data/fsspec/botocore raise many types: missing objects, network, bad URL
        cause = e.__cause__ or e
        raise SpfError(redact(f"--repo {repo} @ {rev}: cannot read data ({type(e).__name__}: {one_line(e)}"
                              + (f"; {type(cause).__name__}: {one_line(cause)}" if cause is not e else "")
                              + ")")) from None
    log.info("pulled %s@%s (%s) into %s", repo, resolved, md5, out_dir)
    return DataRef(rev=resolved, data_hash=md5, path=out_dir)


def read_data_ref(folder: str | Path) -> dict[str, str]:
    """The lineage a pull left beside the data ({} when the folder was not pulled)."""
    p = Path(folder) / DATA_REF_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
