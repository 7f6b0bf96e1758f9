"""Process settings, read once at the edge (the CLI) and handed down as plain values.

Environment variables use the prefix ``TUNERY_`` and ``__`` for nesting, e.g.
``TUNERY_STORAGE__DATABASE_URL=postgresql+psycopg://...``. Nothing below the edges imports this module
(an import-linter contract holds that line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class StorageSettings(BaseModel):
    """Where rows and blobs live."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file tunery.db in the data directory. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    blob_backend: str = Field(default="local", description="'local' (files under data_dir/blobs) or 's3'")
    s3_bucket: str | None = Field(default=None, description="Bucket for blob_backend='s3'")
    s3_prefix: str = Field(default="tunery/", description="Key prefix inside the bucket")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph...)")
    s3_cache_max_bytes: int = Field(
        default=10 * 1024**3, ge=0, description="Most bytes of S3 downloads (adapters, data) a server keeps locally"
    )

    @field_validator("blob_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in {"local", "s3"}:
            raise ValueError("blob_backend must be 'local' or 's3'")
        return value


class FilesSettings(BaseModel):
    """Rules for uploaded training files."""

    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, description="Largest accepted upload")
    min_examples: int = Field(default=10, description="Fewest valid examples a training file may have")
    max_reported_problems: int = Field(default=20, description="Problems listed per bad file")
    max_files_per_project: int = Field(default=50, description="Files a project may keep (quota)")
    max_multipart_bytes: int = Field(default=8 * 1024**3, description="Largest file through the Uploads API")
    max_part_bytes: int = Field(default=64 * 1024**2, description="Largest Uploads API part")
    import_dirs: list[Path] = Field(
        default_factory=list, description="Local folders admin keys may import from (/files/import file://...)"
    )
    recheck_interval_s: float = Field(
        default=60.0, description="How often a server takes up file checks left waiting (a stopped server's)"
    )
    import_allow_private_urls: bool = Field(
        default=False, description="Let /files/import fetch from loopback, private, link-local addresses; off: refused"
    )
    import_allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names, addresses or networks (CIDR) imports may fetch from anyway"
    )


class ModelsSettings(BaseModel):
    """The base-model catalog."""

    base_models: list[str] = Field(
        default_factory=lambda: ["SmolLM2-135M-Instruct"],
        description="Base models offered for fine-tuning: a bundled name, a local Hugging Face directory, "
        "'name=/path/to/dir' or 'name=hub:org/model'. The first one counts tokens in uploaded files.",
    )


class JobsSettings(BaseModel):
    """Per-project job limits (spec §11)."""

    max_jobs_per_project: int = Field(default=100, description="Jobs a project may keep in total")
    max_waiting_per_project: int = Field(default=20, description="Jobs a project may have pending or queued")


class WorkerSettings(BaseModel):
    """How the worker runs training."""

    enabled: bool = Field(default=True, description="Run a worker thread inside `tunery serve`")
    poll_interval_s: float = Field(default=1.0, description="How often an idle worker looks for jobs")
    metrics_every: int = Field(default=10, description="A metrics event (with a validation batch) every N steps")
    max_seq_len: int = Field(default=2048, description="Longest packed training row in tokens")
    lora_r: int = Field(default=16, description="LoRA rank")
    lora_alpha: int = Field(default=32, description="LoRA alpha")
    lora_dropout: float = Field(default=0.0, description="LoRA dropout")
    warmup_ratio: float = Field(
        default=0.0, ge=0, le=0.5, description="Share of a run's steps over which the learning rate warms up"
    )
    keep_checkpoints: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Checkpoints kept per job: the newest N, plus the model and any deployed, paused at or "
        "continued from",
    )
    lora_target_modules: list[str] | None = Field(
        default=None, description="Modules to adapt; default: attention and MLP projections"
    )
    dtype: str = Field(default="auto", description="'auto' (bf16 where fast), 'bf16' or 'fp32'; never fp16 on CPU")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    num_threads: int | None = Field(default=None, description="CPU threads for training (default: all cores)")
    processes: int = Field(
        default=1,
        ge=0,
        description="Data-parallel training processes per job under torchrun (gloo on CPU, nccl on CUDA); "
        "0: one per GPU (1 without CUDA). A job's distributed.processes overrides it",
    )
    stale_after_s: float = Field(default=30.0, description="A job whose worker is silent this long is recovered")
    rft_temperature: float = Field(default=1.0, description="Reinforcement fine-tuning: sampling temperature")
    rft_kl_beta: float = Field(default=0.04, description="Reinforcement fine-tuning: KL penalty to the start model")
    rft_max_new_tokens: int | None = Field(
        default=None, description="Reinforcement fine-tuning: answer budget in tokens (default: by reasoning_effort)"
    )
    grader_concurrency: int = Field(default=4, description="Reinforcement fine-tuning: gradings run at once")


class InferenceSettings(BaseModel):
    """The serving engine."""

    adapter_cache_mb: float = Field(
        default=256,
        gt=0,
        description="Memory per base model for loaded LoRA adapters (their tensors' bytes); the least recently used "
        "idle ones leave to make room, an adapter larger than all of it is refused",
    )
    max_loaded_adapters: int | None = Field(
        default=None, ge=1, description="Optional cap on the count of loaded adapters per base model (default: none)"
    )
    max_batch_size: int = Field(default=16, description="Requests decoded together in one forward pass")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    dtype: str = Field(default="auto", description="'auto' (bf16 where fast), 'bf16' or 'fp32'; never fp16 on CPU")
    num_threads: int | None = Field(default=None, description="CPU threads for inference (default: all cores)")
    isolation: Literal["process", "thread"] = Field(
        default="process",
        description="'process': the engine runs in a supervised child process (restarted if it dies); "
        "'thread': inside the server process",
    )
    memory_limit_mb: int | None = Field(
        default=None,
        description="Resident memory limit of the engine process, over which it is restarted "
        "(default: 80% of this machine's memory; 0: no limit)",
    )
    hang_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="An engine process with requests that sends no heartbeat, or finishes no forward pass, for this "
        "long is killed as hung and restarted (0: no hang check); must exceed the slowest single pass",
    )
    adapter_timeout_s: float = Field(
        default=60.0, description="Longest a request waits for its adapter to get a slot and load (then 503)"
    )
    max_prefill_tokens: int = Field(
        default=512, description="Prompt tokens read per step; longer prompts are read in chunks between decode steps"
    )
    prefix_cache_mb: int = Field(
        default=256, description="Memory per base model for reused prompt prefixes (shared system prompts); 0: off"
    )
    lean_forward: bool = Field(
        default=True,
        description="Llama models decode through Tunery's lean forward (fused weights); false: transformers' forward",
    )
    native_attention: bool = Field(
        default=True,
        description="Decode steps attend through a small C kernel compiled on this machine at the first model load "
        "(~2x torch's attention here); without a C compiler, or false, torch's attention",
    )
    llama_cpp: Literal["off", "auto", "always"] = Field(
        default="off",
        description="llama.cpp's llama-server as a second backend (CPU): 'auto' sends it the requests while one model "
        "(base or one adapter) is in flight, where it was measured faster per stream, and Tunery's engine the rest; "
        "'always' every request it can take; needs llama_cpp_server or llama-server on PATH",
    )
    llama_cpp_server: str | None = Field(default=None, description="Path to llama-server (default: the one on PATH)")
    llama_cpp_slots: int = Field(default=4, ge=1, description="Requests one llama-server decodes together")
    llama_cpp_slot_context: int = Field(
        default=2048, ge=64, description="Tokens per llama.cpp slot (prompt + answer); longer requests go to Tunery's"
    )
    llama_cpp_max_servers: int = Field(
        default=4, ge=1, description="llama-server processes at once (one per base model + adapter; LRU)"
    )
    llama_cpp_weights: Literal["auto", "F16", "BF16"] = Field(
        default="auto",
        description="The base model's GGUF matrices for llama.cpp; 'auto': whichever it decodes faster here, timed "
        "once per machine at the first request",
    )
    llama_cpp_args: list[str] = Field(default_factory=list, description="Extra llama-server arguments")


class DeploymentsSettings(BaseModel):
    """Deployment rules (spec §9.1)."""

    max_per_project: int = Field(default=5, description="Deployments a project may have")
    inactivity_days: float = Field(default=15.0, description="Delete deployments not called for this many days")
    reap_interval_s: float = Field(default=3600.0, description="How often the inactivity reaper runs")


class EvalsSettings(BaseModel):
    """``TUNERY_EVALS__*``: eval runs (bounds checked before a run starts) and the runner in ``tunery serve``."""

    runner_enabled: bool = Field(default=True, description="Run the eval runner thread inside `tunery serve`")
    poll_interval_s: float = Field(default=0.5, description="How often an idle runner looks for queued runs")
    batch_size: int = Field(default=32, description="Items of a run sampled together on the engine")
    max_items_per_run: int = Field(default=5000, description="Most rows a run may have")
    max_completion_tokens: int = Field(default=1024, description="Most completion tokens per item")
    default_completion_tokens: int = Field(default=256, description="Completion tokens per item when unset")
    max_run_tokens: int = Field(default=2_000_000, description="Most completion tokens (items x max) per run")
    stale_after_s: float = Field(default=60.0, description="A run whose runner is silent this long is resumed")


class GradersSettings(BaseModel):
    """The python grader's sandbox (one forked child per grading, from a warm pool)."""

    python_timeout_s: float = Field(default=120.0, description="Wall-clock limit of one python grading")
    python_cpu_s: float = Field(default=120.0, description="CPU-time limit of one python grading")
    python_memory_mb: int = Field(default=2048, description="Address-space limit of one python grading")
    python_workers: int = Field(default=2, description="Warm sandbox processes (python gradings run at once)")


class PortabilitySettings(BaseModel):
    """Export, import and migration (README "Moving in and out")."""

    import_allowed_dir: Path | None = Field(
        default=None, description="Adapters in folders under this one may be imported by server path; unset: off"
    )
    max_import_bytes: int = Field(default=2 * 1024**3, description="Largest adapter archive accepted for import")
    hf_endpoint: str = Field(default="https://huggingface.co", description="Hugging Face Hub for pushes")
    hf_token: str | None = Field(default=None, description="Hub token used when a push request brings none")
    export_cache_max_bytes: int = Field(default=20 * 1024**3, description="Most bytes DATA_DIR/exports keeps")
    export_cache_max_age_s: float = Field(
        default=7 * 24 * 3600.0, description="An export unused this long is removed (rebuilt on the next download)"
    )


class WebhooksSettings(BaseModel):
    """Webhook delivery and tracker runs from the outbox."""

    enabled: bool = Field(default=True, description="Run the outbox sender thread in `tunery serve`/`tunery worker`")
    poll_interval_s: float = Field(default=0.5, description="How often the sender looks for due events")
    timeout_s: float = Field(default=10.0, description="Seconds a receiver has to answer one attempt")
    retry_base_s: float = Field(default=5.0, description="Wait after the first failed attempt; doubles each time")
    retry_max_s: float = Field(default=3600.0, description="Longest wait between two attempts")
    give_up_after_s: float = Field(default=72 * 3600.0, description="No attempt later than this after the event")
    tracker_timeout_s: float = Field(default=600.0, description="Longest a tracker (wandb, mlflow) run may take")
    allow_private_urls: bool = Field(
        default=False,
        description="Let endpoint URLs reach loopback, private, link-local (metadata) addresses; off: refused",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names, addresses or networks (CIDR) endpoints may reach even though they are private",
    )


class IntegrationsSettings(BaseModel):
    """Experiment trackers named in a job's ``integrations``."""

    wandb_dir: Path | None = Field(
        default=None, description="Where W&B run directories go (default: data_dir/wandb); sync them later"
    )
    wandb_mode: str = Field(default="offline", description="WANDB_MODE for runs: 'offline' (no network) or 'online'")
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow tracking server for 'mlflow' jobs")


class ApiSettings(BaseModel):
    """The HTTP edge."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on")
    port: int = Field(default=8000, description="TCP port")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS")


class Settings(BaseSettings):
    """Everything a Tunery process needs to know, from the environment and defaults."""

    model_config = SettingsConfigDict(env_prefix="TUNERY_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default=Path(".tunery"), description="Database, blobs and model cache live here")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    deployments: DeploymentsSettings = Field(default_factory=DeploymentsSettings)
    graders: GradersSettings = Field(default_factory=GradersSettings)
    portability: PortabilitySettings = Field(default_factory=PortabilitySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    evals: EvalsSettings = Field(default_factory=EvalsSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    integrations: IntegrationsSettings = Field(default_factory=IntegrationsSettings)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{(self.data_dir / 'tunery.db').resolve()}"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def run_root(self) -> Path:
        return self.data_dir / "runs"
