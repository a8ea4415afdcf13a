"""Records of API group forge/v1 (DESIGN §2).

Every record has ``kind``, ``apiVersion``, ``metadata``, ``spec`` and ``status``. JSON is
camelCase (alias generator); Python attributes are snake_case. Models reject unknown fields
so a typo in an API body is an error naming the field, never a silently ignored key.

Times are fixed-width RFC 3339 strings (``forge.clock.iso``) so they order as text.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from forge.errors import Invalid, pydantic_errors

API_VERSION: str = "forge/v1"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
APP_NAME_MAX = 40
GITHUB_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
GITHUB_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
BRANCH = re.compile(
    r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)[^\x00-\x20~^:?*\[\\\x7f]{1,255}(?<!/)(?<!\.lock)(?<!\.)$"
)

# Labels the control plane puts on child records.
LABEL_APP: str = "forge.dev/app"
LABEL_PREVIEW_OF: Final[str] = "forge.dev/preview-of"  # on a pull request's preview App: its App
LABEL_PR: Final[str] = "forge.dev/pr"  # on a preview App and its Preview: the pull request number
LABEL_DEPLOYMENT: str = "forge.dev/deployment"
LABEL_NODE: str = "forge.dev/node"
LABEL_PROCESS: str = "forge.dev/process"  # a non-web Instance's process type (worker, release, cron, run)
LABEL_CRON: str = "forge.dev/cron"  # a cron run's schedule name


def is_dns_label(name: str, max_len: int = 63) -> bool:
    return 0 < len(name) <= max_len and bool(DNS_LABEL.match(name))


def is_dns_name(name: str, max_len: int = 253) -> bool:
    return (
        0 < len(name) <= max_len
        and bool(DNS_SUBDOMAIN.match(name))
        and all(len(p) <= 63 for p in name.split("."))
    )


def is_repo(repo: str) -> bool:
    owner, sep, name = repo.partition("/")
    return (
        bool(sep)
        and bool(GITHUB_OWNER.match(owner))
        and bool(GITHUB_REPO.match(name))
        and name
        not in (
            ".",
            "..",
        )
        and not name.endswith(".git")
    )


def check_app_name(name: str) -> str:
    if not is_dns_label(name, APP_NAME_MAX):
        raise ValueError(
            f"{name!r} is not a valid app name (lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {APP_NAME_MAX} characters)"
        )
    return name


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=False
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- envelope


class OwnerRef(Model):
    kind: str
    name: str
    uid: str = ""


class ObjectMeta(Model):
    name: str
    uid: str = ""
    resource_version: int = 0
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    owner_ref: OwnerRef | None = None
    deletion_timestamp: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 64:
            raise ValueError("at most 64 labels")
        return check_labels(v)


def check_labels(v: dict[str, str]) -> dict[str, str]:
    """Label keys and values (also a node selector's): ``prefix/name`` keys, short plain values."""
    for k, val in v.items():
        if not LABEL_KEY.match(k):
            raise ValueError(f"label key {k!r} is not valid")
        if not LABEL_VALUE.match(val):
            raise ValueError(f"label value {val!r} for {k!r} is not valid")
    return v


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    type: str = Field(min_length=1, max_length=64)
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class Status(Model):
    observed_generation: int = 0
    phase: str = ""
    conditions: list[Condition] = Field(default_factory=list)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        c = self.condition(type_)
        return c is not None and c.status == "True"


def _put_condition(status: Status, cond: Condition) -> None:
    """Replace the condition of ``cond.type`` in place (keeping the list's order), or append it."""
    for i, c in enumerate(status.conditions):
        if c.type == cond.type:
            status.conditions[i] = cond
            return
    status.conditions.append(cond)


def set_condition(
    status: Status, type_: str, value: ConditionStatus, reason: str, message: str, now_iso: str
) -> bool:
    """Set a condition in place; ``lastTransitionTime`` moves only when status moves.

    Returns True when anything changed.
    """
    cur = status.condition(type_)
    if cur is None:
        status.conditions.append(
            Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=now_iso)
        )
        return True
    changed = (cur.status, cur.reason, cur.message) != (value, reason, message)
    if cur.status != value:
        cur.last_transition_time = now_iso
    cur.status, cur.reason, cur.message = value, reason, message
    return changed


class Resource(Model):
    """Common envelope. Subclasses narrow ``kind``, ``spec`` and ``status``."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    NAME_MAX: ClassVar[int] = 63
    NAME_IS_SUBDOMAIN: ClassVar[bool] = False

    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta
    spec: Any = None
    status: Any = None

    def model_post_init(self, __context: Any) -> None:
        if not self.kind:
            self.kind = self.KIND

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v and cls.KIND and v != cls.KIND:
            raise ValueError(f"kind must be {cls.KIND!r}")
        return v

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, v: str) -> str:
        if v != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION!r}")
        return v

    @field_validator("metadata")
    @classmethod
    def _name(cls, v: ObjectMeta) -> ObjectMeta:
        ok = (
            is_dns_name(v.name, cls.NAME_MAX) if cls.NAME_IS_SUBDOMAIN else is_dns_label(v.name, cls.NAME_MAX)
        )
        if not ok:
            what = "a DNS name" if cls.NAME_IS_SUBDOMAIN else "a DNS-1123 label"
            raise ValueError(
                f"name {v.name!r} must be {what} (lowercase letters, digits, '-'"
                f"{', ' if cls.NAME_IS_SUBDOMAIN else ''}{'.' if cls.NAME_IS_SUBDOMAIN else ''}; "
                f"at most {cls.NAME_MAX} characters)"
            )
        return v

    @property
    def name(self) -> str:
        return self.metadata.name

    def copy_deep(self) -> Resource:
        return self.model_copy(deep=True)


# --------------------------------------------------------------------------- App


class AppSpec(Model):
    repo: str
    branches: list[str] = Field(default_factory=lambda: ["main"], max_length=50)
    domains: list[str] = Field(default_factory=list, max_length=50)
    env: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(default=1, ge=0, le=100)
    # Replicas of the manifest's other process types (``forge scale APP worker=3``); a type not
    # named here runs the manifest's ``processes.TYPE.replicas``.
    processes: dict[str, int] = Field(default_factory=dict, max_length=20)
    auto_deploy: bool = True
    rollback_on_failure: bool = True
    # Only nodes carrying every one of these labels run the app (``{"disk": "ssd"}``).
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=20)
    previews: PreviewSettings | None = None  # pull-request previews (forge.previews)

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not is_repo(v):
            raise ValueError(f"{v!r} is not a GitHub repository (use owner/name)")
        return v

    @field_validator("branches")
    @classmethod
    def _branches(cls, v: list[str]) -> list[str]:
        for b in v:
            if not BRANCH.match(b):
                raise ValueError(f"{b!r} is not a valid branch name")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.lower().rstrip(".")
            if not is_dns_name(d) or "." not in d:
                raise ValueError(f"{d!r} is not a valid domain name")
            out.append(d)
        return out

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @field_validator("processes")
    @classmethod
    def _processes(cls, v: dict[str, int]) -> dict[str, int]:
        return check_process_replicas(v)


_TTL = re.compile(r"^(\d+)([smhd])$")
_TTL_UNITS: Final[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_PREVIEW_TTL: Final[str] = "7d"


def ttl_seconds(value: str | int) -> int:
    """``7d`` / ``48h`` / ``90m`` / ``3600s`` / a number of seconds → seconds; ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _TTL.match(str(value).strip())
        if m is None:
            raise ValueError(f"{value!r} is not a time to live (use 7d, 48h, 90m or seconds)")
        n = int(m.group(1)) * _TTL_UNITS[m.group(2)]
    if not 60 <= n <= 365 * 86400:
        raise ValueError("a preview's ttl must be between 1 minute and 365 days")
    return n


class PreviewSettings(Model):
    """``App.spec.previews``: each pull request against one of the App's branches gets a preview
    App ``APP-pr-N`` until it closes or goes ``ttl`` without a push."""

    enabled: bool = False
    ttl: str | int = DEFAULT_PREVIEW_TTL
    secrets: Literal["none", "inherit"] = "none"  # inherit: the App's Secret (never for forks)
    env: dict[str, str] = Field(default_factory=dict)  # overrides of the App's env in previews

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str | int) -> str | int:
        ttl_seconds(v)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @property
    def ttl_seconds(self) -> int:
        return ttl_seconds(self.ttl)


def check_process_replicas(v: dict[str, int]) -> dict[str, int]:
    for name, n in v.items():
        if not is_dns_label(name, 30) or name in RESERVED_PROCESS_NAMES:
            raise ValueError(f"{name!r} is not a process type (a DNS label; web is set by replicas)")
        if not 0 <= n <= 100:
            raise ValueError(f"replicas of {name} must be 0 to 100")
    return v


def check_env(v: dict[str, str]) -> dict[str, str]:
    if len(v) > 500:
        raise ValueError("at most 500 variables")
    for k, val in v.items():
        if not ENV_KEY.match(k):
            raise ValueError(f"{k!r} is not a valid environment variable name")
        if "\x00" in val or len(val) > 32768:
            raise ValueError(f"value of {k} must be at most 32 KiB without NUL bytes")
    return v


class AppStatus(Status):
    live_deployment: str | None = None
    storage_node: str | None = None  # scheduler-owned: the node holding the app's persistent storage
    service_address: str | None = (
        None  # SERVICE_IP:PORT Caddy dials (router-owned); the kernel picks the backend
    )
    url: str | None = None
    latest_deployment: str | None = None


class App(Resource):
    KIND: ClassVar[str] = "App"
    PLURAL: ClassVar[str] = "apps"
    NAME_MAX: ClassVar[int] = APP_NAME_MAX
    spec: AppSpec
    status: AppStatus = Field(default_factory=AppStatus)


class Resources(Model):
    memory: int = Field(default=256 * 1024 * 1024, ge=0, description="bytes")
    cpu: float = Field(default=0.5, ge=0, description="cores")
    pids: int = Field(default=512, ge=1)
    disk: int = Field(
        default=1024 * 1024 * 1024, ge=0, description="bytes the release tree may hold on its node"
    )


# --------------------------------------------------------------------------- Manifest
# A validated forge.yaml (``forge.manifest`` parses and validates it): part of a Deployment's
# status and of every Instance's spec, typed wherever it is read.


class BuildSpec(Model):
    commands: list[str] = Field(default_factory=list)
    timeout_seconds: float = 600.0
    detected: list[str] = Field(default_factory=list)  # forge.detect's notes (never from forge.yaml)


class RunSpec(Model):
    command: str
    port: int | None = None
    stop_timeout_seconds: float = 10.0


class HealthSpec(Model):
    path: str = "/"
    interval_seconds: float = 10.0
    timeout_seconds: float = 3.0
    retries: int = 3
    start_period_seconds: float = 0.0
    min_ready_seconds: float = 10.0  # every Instance ready this long before promotion


class ProcessSpec(Model):
    """One more long-running process type (``processes.NAME``): a worker, a queue consumer."""

    command: str
    replicas: int = 1
    resources: Resources = Field(default_factory=Resources)  # the top level's, field by field overridden
    env: dict[str, str] = Field(default_factory=dict)  # on top of the top level's
    health_command: str | None = None  # optional: ready while it exits 0
    min_running_seconds: float = 10.0  # running this long without a crash = ready
    stop_timeout_seconds: float | None = None  # default: run.stop_timeout


class CronJobSpec(Model):
    name: str
    schedule: str
    command: str
    timeout_seconds: float = 1800.0
    timezone: str = "UTC"


class ReleaseCommandSpec(Model):
    command: str
    timeout_seconds: float = 600.0


class StorageSpec(Model):
    size: int = 1024**3


class Manifest(Model):
    """A validated forge.yaml with normalised values (bytes, cores, seconds)."""

    name: str | None = None
    runtime: str | None = None
    build: BuildSpec = Field(default_factory=BuildSpec)
    run: RunSpec
    resources: Resources = Field(default_factory=Resources)
    health: HealthSpec = Field(default_factory=HealthSpec)
    env: dict[str, str] = Field(default_factory=dict)
    processes: dict[str, ProcessSpec] = Field(default_factory=dict)
    cron: list[CronJobSpec] = Field(default_factory=list)
    release: ReleaseCommandSpec | None = None
    storage: StorageSpec | None = None

    def to_status(self) -> dict[str, Any]:
        """JSON-able camelCase dict for ``Deployment.status.manifest``."""
        return self.dump()

    @classmethod
    def from_status(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc, "manifest"), "stored manifest") from None


# --------------------------------------------------------------------------- Deployment

TriggerType = Literal["webhook", "api", "rollback", "config"]


class Trigger(Model):
    type: TriggerType = "api"
    delivery_id: str | None = Field(default=None, max_length=128)
    user: str | None = Field(default=None, max_length=128)
    installation_id: int | None = None  # the GitHub App installation that delivered the push
    force: bool | None = None  # forge deploy --force: released and built anew even when already live


class DeploymentConfig(Model):
    """The App's config captured when the release was made, so a rollback restores it."""

    env: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(default=1, ge=0, le=100)
    processes: dict[str, int] | None = None  # App.spec.processes when captured (None: none set)
    domains: list[str] = Field(default_factory=list)
    secrets_version: str | None = None
    node_selector: dict[str, str] | None = None  # App.spec.nodeSelector when captured (None: none set)


class DeploymentSpec(Model):
    app: str
    commit: str
    ref: str = ""
    repo: str | None = None
    trigger: Trigger = Field(default_factory=Trigger)
    rollback_of: str | None = None
    config: DeploymentConfig | None = None

    @field_validator("commit")
    @classmethod
    def _commit(cls, v: str) -> str:
        if not COMMIT.match(v):
            raise ValueError(f"{v!r} is not a commit (40 lowercase hex characters)")
        return v

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        return check_app_name(v)


DeploymentPhase = Literal["", "Pending", "Building", "Starting", "Live", "Superseded", "Failed", "Cancelled"]
DEPLOYMENT_TERMINAL: frozenset[str] = frozenset({"Superseded", "Failed", "Cancelled"})


class DeploymentStatus(Status):
    phase: DeploymentPhase = ""
    manifest: Manifest | None = None  # written by source; stored as JSON, read back typed
    ready_replicas: int = 0
    replicas: int = 0
    reason: str = ""
    message: str = ""
    created_time: str | None = None
    live_time: str | None = None
    finished_time: str | None = None
    superseded_time: str | None = None
    # Written by the rollout controller (additive): the config it actually applied to the
    # release's Instances (incl. the Secret version) and the App generation it saw then.
    applied_config: DeploymentConfig | None = None
    app_generation: int = 0
    # Written by the rollback controller while a Live release is judged: when it first failed
    # (a restart or no ready replica; only a stable stretch clears it, a brief recovery does
    # not), and the restarts it has counted so far.
    failing_since: str | None = None
    failing_restarts: int = 0  # restarts counted since failing_since
    restarts_seen: int | None = None
    last_restart_time: str | None = None
    # Written by the rollout controller: the release command's one run (forge.yaml ``release``).
    release_phase: ReleasePhase | None = None
    # Written by the rollout controller: the release whose build this one runs (the first of the
    # same commit and build inputs; itself when empty). Nodes keep builds by that name.
    build: str = ""
    # Written by the github controller only: how far this release's report to GitHub got.
    github: GithubReport | None = None


class GithubReport(Model):
    """The github controller's own slot: the GitHub Deployment it created and the steps it sent."""

    deployment_id: int | None = None
    sent: list[str] = Field(default_factory=list)
    message: str = ""  # why the last attempt did not go out (no secrets), "" once it did


class ReleasePhase(Model):
    instance: str  # the one-shot Instance that runs it: APP-N-release
    phase: Literal["Running", "Succeeded", "Failed"] = "Running"
    exit_code: int | None = None
    reason: str = ""
    message: str = ""


class Deployment(Resource):
    KIND: ClassVar[str] = "Deployment"
    PLURAL: ClassVar[str] = "deployments"
    spec: DeploymentSpec
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)


def deployment_number(name: str) -> int:
    """``hello-12`` → 12; -1 when the name has no release number."""
    _, _, n = name.rpartition("-")
    return int(n) if n.isdigit() else -1


def next_release_number(deployments: list[Deployment]) -> int:
    """N of the next release ``APP-N``: one past the highest existing (1 for the first)."""
    return 1 + max(0, max((deployment_number(d.metadata.name) for d in deployments), default=0))


# --------------------------------------------------------------------------- Instance


DesiredState = Literal["Running", "Stopped"]
WEB: Final[str] = "web"
RESERVED_PROCESS_NAMES: frozenset[str] = frozenset({"web", "release", "run", "cron"})
OneShotType = Literal["release", "cron", "run"]


class OneShot(Model):
    """What makes an Instance a one-shot run (the release command, a cron run, ``forge run``):
    it runs its command once to its end, is never restarted, never routed, and ends Succeeded
    or Failed with its exit code."""

    type: OneShotType
    command: str = Field(min_length=1, max_length=4096)
    timeout_seconds: float = Field(default=600.0, gt=0, le=86400)
    schedule: str | None = None  # cron: the schedule's name
    scheduled_time: str | None = None  # cron: the time it was due
    interactive: bool = False  # forge run -i: stdin comes through the API
    # cron: why this run never runs (a previous run was still going), set by cron when it makes
    # the record; the Instance then reads as phase Skipped (``apply_instance_verdicts``).
    skipped: str | None = Field(default=None, max_length=1024)


class InstanceSpec(Model):
    """Everything a node agent needs to build and run one process; agents never read Apps."""

    app: str
    deployment: str
    index: int = 0
    node: str | None = None
    desired: DesiredState = "Running"
    repo: str
    commit: str
    # The release's ref (Deployment.spec.ref): a pull request's head (refs/pull/N/head) is
    # fetched by it, as the source controller does (forge.gitsource.GitSource.fetch decides).
    ref: str = ""
    manifest: Manifest | None = None  # the release's (Deployment.status.manifest)
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    secret: str | None = None
    process: str = WEB  # the manifest's process type this Instance runs (web: run.command)
    oneshot: OneShot | None = None
    storage: int = 0  # bytes of the app's persistent storage (forge.yaml storage.size), 0: none
    node_selector: dict[str, str] = Field(default_factory=dict)  # labels its node must carry
    # Set by rollout when a scale-down retires this Instance: the router stops sending it traffic
    # at once and rollout asks it to stop a drain later. The agent leaves the process alone.
    unrouted_time: str | None = None
    # What the release's build is keyed by (commit and build inputs): every release of that
    # commit and build shares one built tree on a node — a config release or a rollback reuses it.
    build: str = ""
    # forge restart: a new value asks the agent to restart the process in place (same release,
    # no build); a restart asked for is not a crash (restarts is not counted).
    restart_generation: int = 0

    @field_validator("manifest", mode="before")
    @classmethod
    def _no_manifest(cls, v: Any) -> Any:
        return None if v == {} else v  # records from before the manifest was typed stored {} for none


InstancePhase = Literal[
    "",
    "Pending",
    "Scheduled",
    "Building",
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Failed",
    "Lost",
    "Succeeded",
    "Skipped",
]
INSTANCE_TERMINAL: frozenset[str] = frozenset({"Stopped", "Failed", "Lost", "Succeeded", "Skipped"})


class InstanceStatus(Status):
    phase: InstancePhase = ""
    address: str | None = None  # where the Instance is reached: its namespace's address, or the node's
    port: int | None = None
    pid: int | None = None
    ready: bool = False
    restarts: int = 0
    last_probe_time: str | None = None
    last_probe_result: str | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    started_time: str | None = None
    ready_time: str | None = None
    oom_kills: int = 0
    finished_time: str | None = None  # a one-shot's end


class Instance(Resource):
    KIND: ClassVar[str] = "Instance"
    PLURAL: ClassVar[str] = "instances"
    spec: InstanceSpec
    status: InstanceStatus = Field(default_factory=InstanceStatus)

    @model_validator(mode="after")
    def _verdicts(self) -> Instance:
        apply_instance_verdicts(self)
        return self


# Verdicts other parts hand the agent (the one writer of an Instance's phase, reason, message,
# ready and Ready condition) for Instances it cannot speak for: the nodes controller's condition
# (its node was lost while it ran) and cron's ``spec.oneshot.skipped`` (it never runs). The agent
# may be gone for good, so the verdict is applied where every reader meets the record: each
# typed read (``apply_instance_verdicts``, run when an Instance is validated). Both verdicts are
# final, so a stored copy of the view (any writer's read-modify-write) reads back the same.
COND_NODE_LOST: Final[str] = "NodeLost"  # nodes controller: True = written off with its node
REASON_NODE_LOST: Final[str] = "NodeLost"
REASON_PREVIOUS_RUN_ACTIVE: Final[str] = "PreviousRunActive"


def instance_verdict(inst: Instance) -> tuple[InstancePhase, str, str, str | None] | None:
    """(phase, reason, message, since) an Instance reads as by another part's verdict, or None."""
    lost = inst.status.condition(COND_NODE_LOST)
    if lost is not None and lost.status == "True":
        return "Lost", lost.reason or REASON_NODE_LOST, lost.message, lost.last_transition_time
    if inst.spec.oneshot is not None and inst.spec.oneshot.skipped is not None:
        return "Skipped", REASON_PREVIOUS_RUN_ACTIVE, inst.spec.oneshot.skipped, inst.metadata.created_at
    return None


def apply_instance_verdicts(inst: Instance) -> None:
    """The agent's report, overruled by a verdict: phase, reason, message, not ready. Pure in
    the record (the Ready condition moves at the verdict's own time), so applying it twice, or
    to a stored copy of its own result, changes nothing."""
    found = instance_verdict(inst)
    if found is None:
        return
    st = inst.status
    st.phase, st.reason, st.message, since = found
    st.ready = False
    ready = st.condition("Ready")
    if ready is None or (ready.status, ready.reason, ready.message) != ("False", st.reason, st.message):
        _put_condition(
            st,
            Condition(
                type="Ready", status="False", reason=st.reason, message=st.message, last_transition_time=since
            ),
        )


# --------------------------------------------------------------------------- Node


class NodeSpec(Model):
    address: str = "127.0.0.1"
    unschedulable: bool = False  # cordoned: nothing new is scheduled here
    # Drain requested (``forge nodes drain``): cordoned, and the nodes controller moves its
    # Instances elsewhere with a replacement that is ready before the old one stops.
    drain: bool = False


class Capacity(Model):
    cpu: float = 0.0
    memory: int = 0


class Isolation(Model):
    cgroups: Literal["v1", "v2", "none"] = "none"
    namespaces: bool = False
    bwrap: bool = False
    network: Literal["netns", "host"] = "host"  # netns: each Instance and build in its own network namespace
    disk: Literal["image", "watcher"] = "watcher"  # image: each release its own size-limited filesystem
    missing: list[str] = Field(default_factory=list)


class NodeStatus(Status):
    capacity: Capacity = Field(default_factory=Capacity)
    allocatable: Capacity = Field(default_factory=Capacity)
    last_heartbeat_time: str | None = None
    isolation: Isolation = Field(default_factory=Isolation)
    instance_subnet: str | None = None  # where this node's Instances get their addresses (netns mode)
    runtimes: list[str] = Field(default_factory=list)
    agent_version: str | None = None
    metrics_address: str | None = None


class Node(Resource):
    KIND: ClassVar[str] = "Node"
    PLURAL: ClassVar[str] = "nodes"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    @model_validator(mode="after")
    def _derived(self) -> Node:
        derive_node_readiness(self.status)
        return self


# A Node's ``Ready`` condition and ``phase`` have no writer: they are derived, on every typed
# read, from the conditions two parts own — the agent's ``AgentReady`` (it runs, with what
# isolation) and the nodes controller's ``NodeLost`` (its Lease lapsed). Computed from those two
# alone, a stored copy of the result never feeds back: a node that renews is Ready again.
COND_AGENT_READY: Final[str] = "AgentReady"  # agent: True = the agent runs and serves this node


def derive_node_readiness(st: NodeStatus) -> None:
    """Set ``conditions[Ready]`` and ``phase`` from ``AgentReady`` and ``NodeLost`` (pure)."""
    lost, agent = st.condition(COND_NODE_LOST), st.condition(COND_AGENT_READY)
    if lost is not None and lost.status in ("True", "Unknown"):
        src = lost  # written off (Ready False), or unreachable while nothing is evicted (Unknown)
    elif agent is not None:
        src = agent
    elif lost is None:
        # Written by an agent from before AgentReady (an older record): its Ready is the agent's.
        cur = st.condition("Ready")
        st.phase = "Ready" if cur is not None and cur.status == "True" else "NotReady"
        return
    else:
        # A verdict lifted, and no word of the agent's: the stored Ready may be a copy of the
        # verdict's view, so it says nothing.
        src = Condition(
            type=COND_AGENT_READY,
            status="Unknown",
            reason="NodeStatusUnknown",
            message="the agent has not reported since the node was lost",
            last_transition_time=lost.last_transition_time,
        )
    value: ConditionStatus = ("False" if src.status == "True" else "Unknown") if src is lost else src.status
    ready = st.condition("Ready")
    want = (value, src.reason, src.message, src.last_transition_time)
    if ready is None or (ready.status, ready.reason, ready.message, ready.last_transition_time) != want:
        _put_condition(
            st,
            Condition(
                type="Ready",
                status=value,
                reason=src.reason,
                message=src.message,
                last_transition_time=src.last_transition_time,
            ),
        )
    st.phase = "Ready" if value == "True" else "NotReady"


# --------------------------------------------------------------------------- Event


class ObjectRef(Model):
    kind: str
    name: str
    uid: str = ""


class EventSpec(Model):
    involved_object: ObjectRef
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str = Field(min_length=1, max_length=128)
    message: str = Field(default="", max_length=4096)
    count: int = 1
    first_time: str | None = None
    last_time: str | None = None
    source: str = ""


class Event(Resource):
    KIND: ClassVar[str] = "Event"
    PLURAL: ClassVar[str] = "events"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: EventSpec
    status: Status = Field(default_factory=Status)


# --------------------------------------------------------------------------- Secret


class SecretSpec(Model):
    """``data`` is write-only: the API encrypts values before they reach the store and never
    returns them."""

    app: str
    data: dict[str, str] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _data(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not ENV_KEY.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v


class SecretStatus(Status):
    keys: list[str] = Field(default_factory=list)
    updated_time: str | None = None
    # Keyed digest of the plaintext values, written by the API with every data change; key
    # rotation re-encrypts ``spec.data`` but leaves it alone, so releases follow values, not
    # ciphertexts.
    data_digest: str | None = Field(default=None, max_length=128)


class Secret(Resource):
    KIND: ClassVar[str] = "Secret"
    PLURAL: ClassVar[str] = "secrets"
    spec: SecretSpec
    status: SecretStatus = Field(default_factory=SecretStatus)


class RepoCredentialSpec(Model):
    scope: str
    token: str = ""

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if "/" in v:
            if not is_repo(v):
                raise ValueError(f"{v!r} is not owner or owner/repo")
        elif not GITHUB_OWNER.match(v):
            raise ValueError(f"{v!r} is not owner or owner/repo")
        return v


class RepoCredential(Resource):
    KIND: ClassVar[str] = "RepoCredential"
    PLURAL: ClassVar[str] = "repocredentials"
    spec: RepoCredentialSpec
    status: Status = Field(default_factory=Status)


TRUSTED_ASSOCIATIONS: Final[frozenset[str]] = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
PreviewState = Literal["open", "closed"]


class PreviewSpec(Model):
    """One pull request of an App, as the webhook (and ``forge previews approve``) last saw it.

    ``trusted``: the head is in the base repository and its author is an OWNER, MEMBER or
    COLLABORATOR. An untrusted head builds only once ``approvedSha`` equals ``headSha``."""

    app: str
    number: int = Field(ge=1)
    repo: str  # the base repository, owner/name
    base_ref: str = ""
    head_sha: str
    head_repo: str = ""
    author: str = ""
    author_association: str = ""
    draft: bool = False
    state: PreviewState = "open"
    trusted: bool = False
    approved_sha: str | None = None
    approved_by: str | None = None
    head_time: str | None = None  # when the head was pushed (the ttl runs from here)

    @field_validator("head_sha")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not COMMIT.match(v):
            raise ValueError(f"{v!r} is not a commit (40 lowercase hex characters)")
        return v


class PreviewGithub(Model):
    """The github-previews controller's own slot."""

    waiting_sha: str | None = None  # the head whose "waits for approval" commit status was sent
    inactive_generation: int = 0  # the Preview generation whose teardown GitHub was told of


class PreviewStatus(Status):
    # phase: Draft | AwaitingApproval | Deploying | Live | Failed | Closed | Expired (previews controller)
    deployment: str | None = None
    url: str | None = None
    message: str = ""
    github: PreviewGithub | None = None  # written by the github-previews controller only


class Preview(Resource):
    KIND: ClassVar[str] = "Preview"
    PLURAL: ClassVar[str] = "previews"
    spec: PreviewSpec
    status: PreviewStatus = Field(default_factory=PreviewStatus)


class GithubAppSpec(Model):
    """The GitHub App ``forge github connect`` created (one record, named ``github``). ``privateKey``
    and ``webhookSecret`` are sealed like Secret values and never leave the server."""

    app_id: int
    slug: str = ""
    html_url: str = ""
    owner: str = ""
    private_key: str = ""  # sealed PEM (AAD ``GithubApp/NAME/privateKey``)
    webhook_secret: str = ""  # sealed (AAD ``GithubApp/NAME/webhookSecret``)


class GithubApp(Resource):
    KIND: ClassVar[str] = "GithubApp"
    PLURAL: ClassVar[str] = "githubapps"
    spec: GithubAppSpec
    status: Status = Field(default_factory=Status)


# --------------------------------------------------------------------------- Notifications

NotifyEvent = Literal["DeployFailed", "RolledBack", "CrashLoop", "ErrorRate", "Test"]
NOTIFY_EVENTS: Final[tuple[str, ...]] = ("DeployFailed", "RolledBack", "CrashLoop", "ErrorRate", "Test")
NotifyFormat = Literal["slack", "generic"]


class NotifierSpec(Model):
    """A webhook that hears of an App's failures (``app``), or of every App's (``app`` empty).

    ``url`` is sealed like a Secret value (a Slack webhook URL carries its credential) and never
    leaves the server; ``urlHint`` is the masked form shown instead (scheme, host, last 4)."""

    app: str = ""
    url: str = Field(min_length=1, max_length=16384)  # sealed: longer than the URL
    url_hint: str = ""
    format: NotifyFormat = "slack"  # generic: the Slack body plus a structured ``forge`` object
    events: list[NotifyEvent] = Field(default_factory=list)  # empty: every event

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        return check_app_name(v) if v else v


class Notifier(Resource):
    KIND: ClassVar[str] = "Notifier"
    PLURAL: ClassVar[str] = "notifiers"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: NotifierSpec
    status: Status = Field(default_factory=Status)


class NotificationSpec(Model):
    """One message to send, made by the notify controller with a name that is the message's
    identity (``hello-4.deployfailed``): made once, sent to ``targets`` (Notifier names) once."""

    event: NotifyEvent
    app: str
    release: str = ""
    commit: str = ""
    reason: str = ""
    message: str = Field(default="", max_length=4096)
    time: str = ""  # when it happened
    targets: list[str] = Field(default_factory=list)


class Delivery(Model):
    """How one target's send went (the notify-delivery controller's own record)."""

    state: Literal["Pending", "Sent", "Failed", "Dropped"] = "Pending"
    attempts: int = 0
    sent_time: str | None = None
    not_before_time: str | None = None  # the receiver's Retry-After, kept across restarts
    message: str = ""  # why the last attempt did not go out (never the URL)


class NotificationStatus(Status):
    # phase: Pending | Delivered (every target Sent) | Failed (some target gave up) — delivery's
    deliveries: dict[str, Delivery] = Field(default_factory=dict)
    finished_time: str | None = None


class Notification(Resource):
    KIND: ClassVar[str] = "Notification"
    PLURAL: ClassVar[str] = "notifications"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: NotificationSpec
    status: NotificationStatus = Field(default_factory=NotificationStatus)


# --------------------------------------------------------------------------- Lease / NodeToken


class HolderProcess(Model):
    """The process behind a Lease's holder, so that its successor on the same machine can prove it
    gone (``forge.processid``): the machine (hostname and ``/etc/machine-id``), the boot
    (``/proc/sys/kernel/random/boot_id``), the pid namespace, the pid and its start time."""

    host: str = ""
    machine_id: str = ""
    boot_id: str = ""
    pid_namespace: str = ""
    pid: int = 0
    start_ticks: int | None = None


class LeaseSpec(Model):
    holder: str = ""
    renew_time: str | None = None
    acquire_time: str | None = None
    duration_seconds: float = 15.0
    transitions: int = 0
    holder_process: HolderProcess | None = None


class Lease(Resource):
    KIND: ClassVar[str] = "Lease"
    PLURAL: ClassVar[str] = "leases"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: LeaseSpec = Field(default_factory=LeaseSpec)
    status: Status = Field(default_factory=Status)


class LogDrainSpec(Model):
    """A drain of one App's log lines (``forge.drains``). ``url`` is sealed at rest (it may hold
    credentials) and write-only like a Secret's values; ``maskedUrl`` is what people see."""

    app: str
    url: str = Field(min_length=1, max_length=4096)
    masked_url: str = Field(default="", max_length=4096)

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        return check_app_name(v)


class DrainDelivery(Model):
    """One node's delivery to one drain, written by that node's agent only (its own slot)."""

    delivered: int = Field(default=0, ge=0)  # lines the receiver acknowledged (TCP-acked, HTTP 2xx)
    dropped: int = Field(default=0, ge=0)  # lines dropped: over the drain's buffer on the node
    dropped_bytes: int = Field(default=0, ge=0)  # … plus bytes deleted before they were sent
    pending_bytes: int = Field(default=0, ge=0)  # written but not yet acknowledged
    last_error: str = Field(default="", max_length=512)  # masked; "" once delivery works again
    last_error_time: str | None = None
    last_delivery_time: str | None = None
    updated_time: str | None = None


class LogDrainStatus(Status):
    nodes: dict[str, DrainDelivery] = Field(default_factory=dict)


class LogDrain(Resource):
    KIND: ClassVar[str] = "LogDrain"
    PLURAL: ClassVar[str] = "logdrains"
    spec: LogDrainSpec
    status: LogDrainStatus = Field(default_factory=LogDrainStatus)


class NodeTokenSpec(Model):
    """A node's join token, stored only as its SHA-256 digest (name = node name)."""

    token_sha256: str


class NodeToken(Resource):
    KIND: ClassVar[str] = "NodeToken"
    PLURAL: ClassVar[str] = "nodetokens"
    NAME_IS_SUBDOMAIN: ClassVar[bool] = True
    NAME_MAX: ClassVar[int] = 253
    spec: NodeTokenSpec
    status: Status = Field(default_factory=Status)


KINDS: dict[str, type[Resource]] = {
    c.KIND: c
    for c in (
        App,
        Deployment,
        Instance,
        Node,
        Event,
        Secret,
        RepoCredential,
        Lease,
        NodeToken,
        GithubApp,
        Preview,
        Notifier,
        Notification,
        LogDrain,
    )
}
PLURALS: dict[str, type[Resource]] = {c.PLURAL: c for c in KINDS.values()}


def kind_class(kind_or_plural: str) -> type[Resource]:
    """Resolve ``App``, ``app``, ``apps`` to the model class; KeyError when unknown."""
    if kind_or_plural in KINDS:
        return KINDS[kind_or_plural]
    low = kind_or_plural.lower()
    for c in KINDS.values():
        if low in (c.KIND.lower(), c.PLURAL):
            return c
    raise KeyError(kind_or_plural)


def parse_record(data: dict[str, Any], kind: str | None = None) -> Resource:
    """Validate a JSON-shaped dict into its model (pydantic ValidationError on bad input)."""
    cls = kind_class(kind or data.get("kind", ""))
    return cls.model_validate(data)
