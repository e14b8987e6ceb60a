"""The training data as an MLflow dataset input: which DVC repo, revision and content hash a run trained on.

MLflow has no DVC source, so ``DvcDatasetSource`` is one: its JSON (repo, rev, path, data_hash) is what the run's
"Datasets" panel shows, and ``load()`` pulls exactly that revision again. The dataset itself is the prepared
manifest (one row per kept image: caption, crop, face box, ...), so MLflow also shows its schema and row count.
The digest is the DVC hash, so two runs on the same bytes show the same dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource

#: Columns that describe the data; image bytes and per-face geometry arrays stay in the manifest file.
_COLUMNS = ("id", "caption", "base_phrases", "target_phrase", "caption_source", "crop_path", "face_px", "n_faces")


class DvcDatasetSource(DatasetSource):
    def __init__(self, repo: str, rev: str, data_hash: str, path: str = "data") -> None:
        self.repo, self.rev, self.data_hash, self.path = repo, rev, data_hash, path

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, dst_path: str | None = None) -> str:
        """Pull the data at this revision (``dvc`` + the repo's remote) into ``dst_path``; return the folder."""
        import tempfile

        from spf_lib.data.dvc_io import pull_data

        out = Path(dst_path or tempfile.mkdtemp(prefix="spf-dvc-")) / self.path
        return str(pull_data(self.repo, self.rev, out).path)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("DVC sources are built from (repo, rev, data_hash), not resolved from a string")

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "rev": self.rev, "path": self.path, "data_hash": self.data_hash}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["repo"], source_dict["rev"], source_dict["data_hash"], source_dict.get("path", "data"))


def dataset_name(repo: str, rev: str) -> str:
    return f"{Path(repo.rstrip('/')).name or 'data'}@{rev[:8]}"


def log_dataset_input(client, run_id: str, *, data_dir: str | Path, repo: str, rev: str, data_hash: str,
                      context: str = "training") -> None:
    """Attach the prepared data (manifest rows, DVC source) to ``run_id`` as an input, once per run."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    from spf_lib.registry.scrub import scrub

    manifest = Path(data_dir) / "manifest.parquet"
    df = pd.read_parquet(manifest) if manifest.is_file() else pd.DataFrame()
    df = df[[c for c in _COLUMNS if c in df.columns]].astype(str)
    clean, _ = scrub({"repo": repo})  # a remote URL may carry user:password
    source = DvcDatasetSource(clean["repo"], rev, data_hash)
    ds = mlflow.data.from_pandas(df, source=source, name=dataset_name(clean["repo"], rev), digest=data_hash[:32])
    run = client.get_run(run_id)
    if any(d.dataset.digest == ds.digest for d in (run.inputs.dataset_inputs if run.inputs else [])):
        return  # a retried task: already there
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                     tags=[InputTag("mlflow.data.context", context)])])
