"""What `kerassave serve` serves: models, their version policies and labels,
from the command line or a TF Serving model config file. A leaf but for the
config file's proto (tensorflow-serving-api), imported when one is read.

TF Serving's meaning throughout: a version policy picks the *aspired*
versions among the versions on disk (`latest`: the newest N, `all`,
`specific`: the listed ones); labels name versions ("stable" -> 3).
"""

from __future__ import annotations

import dataclasses
import os

from kerassave_callbacks import _checks

POLICIES = ("latest", "all", "specific")


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk to serve.

    Example:

        VersionPolicy("latest", num_versions=2).aspired([3, 5, 9])  # [5, 9]

    Args:
      kind: "latest" (the newest `num_versions`), "all", or "specific"
        (`versions`). Defaults to "latest".
      num_versions: how many of the newest "latest" serves. Defaults to 1.
      versions: the versions "specific" serves. Defaults to none.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        _checks.check_choice("version_policy", self.kind, POLICIES)
        _checks.check_count("num_versions", self.num_versions)
        object.__setattr__(self, "versions", tuple(sorted(set(self.versions))))
        if self.kind == "specific" and not self.versions:
            raise ValueError(
                "Invalid value for argument `versions`. Received: versions=(). "
                "The 'specific' version policy needs the versions to serve, "
                "e.g. --versions=1764070001,1764070301."
            )

    def aspired(self, on_disk: list[int]) -> list[int]:
        """The versions to serve among `on_disk`, oldest first."""
        ordered = sorted(on_disk)
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        if self.kind == "all":
            return ordered
        return [v for v in ordered if v in self.versions]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model the server follows.

    Example:

        ModelConfig("digits", "/models/digits", VersionPolicy("latest", 2))

    Args:
      name: the model's name in requests (`/v1/models/<name>`).
      base_path: its export directory (local, gs://, ram://, ...).
      policy: which versions to serve. Defaults to the newest one.
      labels: label -> version ("stable" -> 3). Defaults to none.
    """

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(
                f"Invalid model name {self.name!r}: expected a non-empty name "
                "without '/', e.g. --model_name=digits."
            )
        if not self.base_path:
            raise ValueError(f"Model {self.name!r} has no base path to serve.")
        base = self.base_path
        object.__setattr__(
            self, "base_path", base if "://" in base else os.path.abspath(base)
        )


def read_config_file(path: str) -> list[ModelConfig]:
    """The models of a `ModelServerConfig` text file (what `kerassave
    serving_config` prints, and TF Serving's `--model_config_file` reads).

    Raises:
      ValueError: the file does not parse, or names no model.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from kerassave_callbacks import _fs

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(_fs.read_bytes(path).decode("utf-8"), config)
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {e}") from e
    models = [_model(entry) for entry in config.model_config_list.config]
    if not models:
        raise ValueError(f"{path}: its model_config_list names no model.")
    return models


def _model(entry) -> ModelConfig:
    return ModelConfig(
        entry.name,
        entry.base_path,
        _policy(entry.model_version_policy),
        dict(entry.version_labels),
    )


def _policy(proto) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(proto.specific.versions))
    num = proto.latest.num_versions if kind == "latest" else 0
    return VersionPolicy("latest", num_versions=num or 1)
