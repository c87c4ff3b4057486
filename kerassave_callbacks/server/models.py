"""The versions `kerassave serve` has loaded, following export directories
as TF Serving's `FileSystemStoragePathSource` and `AspiredVersionsManager`
do.

Each poll lists a model's complete versions (integer names holding a graph
file), lets its `VersionPolicy` pick the aspired ones, loads each new one
through `core.served.Served` (a fresh graph and session, the warm-up
requests replayed; a replay that fails fails the load), and only then
publishes it. Versions the policy dropped are unloaded once an aspired one
is available, so the only loaded version is never unloaded (TF Serving's
availability-preserving policy). A request holds its version until it is
answered: an unloaded version's session closes when its last request ends.

Thread safety: `poll` runs in one thread (the poller), which may also
replace a model's `config` whole (`ModelServer.reconfigure`); `acquire`,
`status` and `resolve` from any number of request threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

from absl import logging

from kerassave_callbacks import export_dir as export_dir_lib
from kerassave_callbacks.core import served as served_lib
from kerassave_callbacks.server import config as config_lib

ServingError = served_lib.ServingError
# The newest versions whose unloading or failure the status keeps.
_ENDED_KEPT = 20


@dataclasses.dataclass(frozen=True)
class VersionState:
    """A version's state as `GetModelStatus` reports it."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""


class Loaded:
    """A loaded version, counted while requests use it."""

    def __init__(self, version: int, served: served_lib.Served):
        self.version = version
        self.served = served
        self._lock = threading.Lock()
        self._users = 0
        self._retired = False

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and not self._users
        if close:
            self.served.close()

    def retire(self) -> None:
        """Closes the session now, or when the last request using it ends."""
        with self._lock:
            self._retired = True
            close = not self._users
        if close:
            self.served.close()


class ServedModel:
    """One model: its loaded versions, their states, its labels.

    Example:

        model = ServedModel(ModelConfig("digits", "/models/digits"))
        model.poll()
        with model.acquire() as loaded:
            loaded.served.run("serving_default", {"pixels": rows})

    Args:
      config: the model's name, directory, policy and labels.
      max_load_retries: loads of a failing version tried again (TF
        Serving's `--max_num_load_retries`). Defaults to 5.
      retry_seconds: the wait between them. Defaults to 60 (TF Serving's).
    """

    def __init__(
        self,
        config: config_lib.ModelConfig,
        *,
        max_load_retries: int = 5,
        retry_seconds: float = 60.0,
    ):
        self.config = config
        self._dir = export_dir_lib.ExportDir(config.base_path)
        self._max_tries = max_load_retries + 1
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._loaded: dict[int, Loaded] = {}  # replaced whole, never mutated
        self._states: dict[int, VersionState] = {}
        self._failures: dict[int, tuple[int, float]] = {}  # tries, last try

    # The poller's side.

    def poll(self) -> None:
        """Loads what the policy aspires to and unloads what it dropped."""
        try:
            on_disk = self._dir.versions()
        except Exception as e:  # an unreachable directory: keep serving
            logging.warning("Cannot list %s: %s", self.config.base_path, e)
            return
        aspired = self.config.policy.aspired(on_disk)
        for version in reversed(aspired):
            if version not in self._loaded and self._due(version):
                self._load(version)
        self._unload_dropped(set(aspired))
        self._failures = {v: f for v, f in self._failures.items() if v in on_disk}

    def _due(self, version: int) -> bool:
        tries, last = self._failures.get(version, (0, 0.0))
        if tries >= self._max_tries:
            return False
        return not tries or time.monotonic() - last >= self._retry_seconds

    def _load(self, version: int) -> None:
        self._set_state(VersionState(version, "LOADING"))
        path = self._dir.saved_model_path(version)
        try:
            served = served_lib.Served(path)
        except Exception as e:
            code = served_lib.code_of(e)
            return self._failed(version, code, served_lib.first_line(e))
        problems = served.replay_warmup()
        if problems:
            served.close()
            return self._failed(version, "INVALID_ARGUMENT", "; ".join(problems))
        with self._lock:
            self._loaded = {**self._loaded, version: Loaded(version, served)}
        self._set_state(VersionState(version, "AVAILABLE"))
        self._failures.pop(version, None)
        logging.info(
            "Serving %s version %d (loaded in %.2fs)",
            self.config.name,
            version,
            served.load_seconds,
        )

    def _failed(self, version: int, code: str, message: str) -> None:
        tries, _ = self._failures.get(version, (0, 0.0))
        self._failures[version] = (tries + 1, time.monotonic())
        self._set_state(VersionState(version, "END", code, message))
        logging.warning(
            "Failed to load %s version %d: %s", self.config.name, version, message
        )

    def _unload_dropped(self, aspired: set[int]) -> None:
        if not aspired & set(self._loaded):
            return  # nothing aspired is loaded: keep serving what is
        with self._lock:
            dropped = {v: h for v, h in self._loaded.items() if v not in aspired}
            self._loaded = {v: h for v, h in self._loaded.items() if v in aspired}
        for version, handle in dropped.items():
            self._set_state(VersionState(version, "UNLOADING"))
            handle.retire()  # requests holding it finish on it
            self._set_state(VersionState(version, "END"))
            logging.info("Unloaded %s version %d", self.config.name, version)

    def _set_state(self, state: VersionState) -> None:
        with self._lock:
            states = {**self._states, state.version: state}
            ended = sorted(v for v, s in states.items() if s.state == "END")
            for version in ended[:-_ENDED_KEPT]:
                del states[version]
            self._states = states

    def close(self) -> None:
        """Unloads every version."""
        with self._lock:
            loaded, self._loaded = self._loaded, {}
        for handle in loaded.values():
            handle.retire()

    # The requests' side.

    def resolve(self, version: int | None = None, label: str = "") -> int:
        """The version a request's model spec names: the newest loaded one
        when it names none.

        Raises:
          ServingError: NOT_FOUND when no such version is loaded,
            INVALID_ARGUMENT for an unknown label.
        """
        version = self._labelled(version, label)
        loaded = self._loaded
        if version is None:
            if not loaded:
                raise _not_found(f"Latest({self.config.name})")
            return max(loaded)
        if version not in loaded:
            raise _not_found(f"Specific({self.config.name}, {version})")
        return version

    def _labelled(self, version: int | None, label: str) -> int | None:
        """The version a label names (`version` when there is no label)."""
        if not label:
            return version
        labels = self.config.labels  # one read: a reconfigure may replace it
        if label not in labels:
            raise ServingError(f"Unrecognized servable version label: {label}")
        return labels[label]

    @contextlib.contextmanager
    def acquire(self, version: int | None = None, label: str = ""):
        """The loaded version a request names, held for a `with` block."""
        with self._lock:
            handle = self._loaded[self.resolve(version, label)]
            handle.hold()
        try:
            yield handle
        finally:
            handle.release()

    def status(self, version: int | None = None, label: str = "") -> list:
        """`VersionState`s, newest first: all, or of the version named."""
        version = self._labelled(version, label)
        states = self._states
        if version is None:
            if not states:
                raise _not_found_model(f"any versions of model {self.config.name}")
            return [states[v] for v in sorted(states, reverse=True)]
        if version not in states:
            raise _not_found_model(f"version {version} of model {self.config.name}")
        return [states[version]]


def _not_found(request: str) -> ServingError:
    return ServingError(f"Servable not found for request: {request}", "NOT_FOUND")


def _not_found_model(what: str) -> ServingError:
    return ServingError(f"Could not find {what}", "NOT_FOUND")
