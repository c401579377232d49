"""Server settings: one pydantic-settings class for flags, ``GGUFWORKER_*`` env vars and a
config file.

Precedence, highest first, is resolved in :func:`ggufworker.settings_sources.resolve_settings`:
command-line flags > environment variables > config file > defaults.

The ``serve`` command's flags are derived from the fields below
(:func:`ggufworker.settings_flags.add_settings_arguments`),
so a new setting is one field here and shows up as a flag, an env var and a config-file key.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ggufworker.paths import DEFAULT_MODEL, ENV_PREFIX

logger = logging.getLogger(__name__)

ENV_CONFIG = f"{ENV_PREFIX}CONFIG"

StrList = Annotated[list[str], NoDecode]
FloatList = Annotated[list[float], NoDecode]


#: the KV cache element types llama.cpp takes (engine/model.py KV_CACHE_TYPES)
KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]


def default_parallel() -> int:
    """Engine slots sized for the machine: enough to batch 8 clients on a small CPU box."""
    return max(4, min(16, 4 * (os.cpu_count() or 2)))


def _cli(flag: str | None = None, metavar: str | None = None, short: str | None = None) -> dict:
    """Field metadata that shapes the derived CLI flag."""
    return {"cli": {"flag": flag, "metavar": metavar, "short": short}}


class ServerSettings(BaseSettings):
    """Everything `ggufworker serve` can be told. Env vars are the field names, upper-cased,
    prefixed with ``GGUFWORKER_``; list values may be comma-separated or JSON."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- network ---------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1", description="address to bind (127.0.0.1 unless told otherwise)"
    )
    port: int = Field(default=8080, ge=0, le=65535, description="port to bind")
    public_url: str | None = Field(
        default=None, description="URL clients reach this server at (default http://HOST:PORT)"
    )

    # --- models ----------------------------------------------------------------------------
    models: StrList = Field(
        default_factory=list,
        description=f"model to serve, registry name or GGUF path; repeatable "
        f"(default {DEFAULT_MODEL})",
        json_schema_extra=_cli("--model", "NAME|PATH", "-m"),
    )
    embedding_models: StrList = Field(
        default_factory=list,
        description="model to serve on /v1/embeddings (or /v1/rerank, when its GGUF pools by "
        "rank), registry name or GGUF path; repeatable",
        json_schema_extra=_cli("--embedding-model", "NAME|PATH"),
    )
    embedding_parallel: int = Field(
        default=16,
        ge=1,
        le=255,
        description="inputs an embedding model computes in one decode (from one request or "
        "from concurrent ones)",
    )
    embedding_batch_size: int = Field(
        default=2048,
        ge=8,
        description="tokens per embedding decode: also the longest input an embedding model "
        "takes (encoders see a whole input at once)",
    )
    pin: StrList = Field(
        default_factory=list,
        description="model name to keep resident (loaded at start, never unloaded); repeatable",
        json_schema_extra=_cli("--pin", "NAME"),
    )
    keep_alive: float = Field(
        default=300.0,
        description="seconds an idle model stays loaded; negative keeps models forever",
    )
    preload: bool = Field(
        default=True, description="load the first model at start (else on first use)"
    )
    max_loaded_models: int = Field(
        default=0,
        ge=0,
        description="models loaded at once; loading one more first unloads the least recently "
        "used idle model that is not pinned (0: no limit)",
        json_schema_extra=_cli(metavar="N"),
    )
    offline: bool = Field(default=False, description="never download; use only cached models")
    home: Path | None = Field(default=None, description="cache root (default $GGUFWORKER_HOME)")

    # --- LoRA adapters (docs/SERVER.md "LoRA adapters") ---------------------------------------
    loras: StrList = Field(
        default_factory=list,
        description="LoRA adapter (a GGUF from python -m converters.st2gguf ADAPTER --lora) "
        "for the first --model, served as model id MODEL:NAME at SCALE (default 1); repeatable",
        json_schema_extra=_cli("--lora", "NAME=PATH[:SCALE]"),
    )

    @field_validator("loras")
    @classmethod
    def _check_loras(cls, value: list[str]) -> list[str]:
        """Each entry is NAME=PATH[:SCALE] with an existing file (one line otherwise)."""
        from ggufworker.errors import InvalidRequestError
        from ggufworker.server.lora.table import parse_adapter

        for entry in value:
            try:
                spec = parse_adapter(entry)
            except InvalidRequestError as exc:
                raise ValueError(str(exc)) from None
            if not spec.path.is_file():
                raise ValueError(f"--lora {spec.name}: no file at {spec.path}")
        return value

    @field_validator("loras", mode="before")
    @classmethod
    def _split_loras(cls, value: Any) -> Any:
        """A JSON list or comma-separated NAME=PATH[:SCALE] entries (env vars, config files)."""
        if isinstance(value, str):
            text = value.strip()
            return (
                json.loads(text)
                if text.startswith("[")
                else [p.strip() for p in text.split(",") if p.strip()]
            )
        return value

    # --- engine ----------------------------------------------------------------------------
    parallel: int = Field(
        default_factory=default_parallel,
        ge=1,
        le=256,
        description="sequence slots per model (requests decoded together)",
    )
    ctx_size: int = Field(
        default=8192,
        ge=64,
        description="context in tokens one request can use (KV cache per model: one pool "
        "shared by its slots, or one stream per slot; see --kv-layout)",
        json_schema_extra=_cli(short="-c"),
    )
    kv_layout: Literal["auto", "unified", "per-slot"] = Field(
        default="auto",
        description="KV cache layout: per-slot (a stream of --ctx-size per slot: greedy output "
        "independent of other traffic), unified (one pool shared by the slots), or auto "
        "(per-slot when it fits in a quarter of the free memory)",
    )
    backend_sampling: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="where sampled requests (temperature > 0, no grammar or logprobs) are "
        "drawn: on (llama.cpp's graph cuts each row to its top-k, the host draws from those), "
        "off (the host, from the copied logits), auto (on when layers run on a GPU); a seed "
        "gives the same tokens either way",
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads (default: llama.cpp's choice)"
    )
    batch_size: int = Field(default=512, ge=1, description="tokens per llama_decode step")
    gpu_layers: int | None = Field(
        default=None, description="layers to offload to the GPU (-1: all)"
    )
    flash_attn: bool | None = Field(default=None, description="flash attention (default: auto)")
    cache_type_k: KvCacheType = Field(
        default="f16", description="KV cache element type of K (q8_0 halves its memory)"
    )
    cache_type_v: KvCacheType = Field(
        default="f16",
        description="KV cache element type of V (a quantized one needs flash attention)",
    )
    max_queue: int = Field(default=64, ge=0, description="requests waiting for a slot before 429")

    # --- speculative decoding (docs/ENGINE.md "Speculative decoding") ------------------------
    spec_type: Literal["none", "ngram", "draft", "ngram-simple", "draft-simple"] = Field(
        default="none",
        description="speculative decoding: ngram (drafts from the request's own prompt and "
        "output, for edits, quotes and listings), draft (a small draft model, "
        "--spec-draft-model) or none; the engine plans draft lengths from acceptance and load",
    )
    spec_draft_model: str | None = Field(
        default=None,
        description="draft model (GGUF path or registry name) sharing the model's vocabulary",
        json_schema_extra=_cli(short="-md", metavar="MODEL"),
    )
    spec_draft_n_max: int = Field(
        default=16, ge=1, le=64, description="most draft tokens per sequence and step"
    )
    spec_draft_n_min: int = Field(
        default=0, ge=0, le=64, description="shorter drafts are not verified"
    )
    spec_adaptive: bool = Field(
        default=True,
        description="plan draft lengths per step from acceptance and load; off: verify "
        "--spec-draft-n-max drafts whenever a draft exists (for measurements)",
    )

    # --- prompt cache (docs/ENGINE.md "Prompt cache") ----------------------------------------
    cache_ram: int = Field(
        default=1024,
        ge=0,
        description="MiB of host RAM per model for the states of slots given to other "
        "conversations, restored when they come back (0: off)",
        json_schema_extra=_cli(metavar="MIB"),
    )
    ctx_checkpoints: int = Field(
        default=8,
        ge=0,
        description="partial-state checkpoints kept per slot for sliding-window, recurrent and "
        "hybrid models, so a prompt that changes mid-way resumes from the latest one (0: off)",
        json_schema_extra=_cli(metavar="N"),
    )
    checkpoint_every: int = Field(
        default=2048,
        ge=1,
        description="prompt tokens between two checkpoints of a long prefill (one is always "
        "taken at the prompt's end and 4 tokens before it)",
        json_schema_extra=_cli(metavar="TOKENS"),
    )
    slot_prompt_similarity: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="share of a prompt a free slot's cached prefix must cover to reuse that "
        "slot; below it the request takes an empty or the least recently used slot",
    )
    prompt_cache_dir: Path | None = Field(
        default=None,
        description="directory where prompt states persist across restarts, one folder per "
        "model file (default: none)",
        json_schema_extra=_cli(metavar="DIR"),
    )
    cache_disk: int = Field(
        default=4096,
        ge=0,
        description="MiB --prompt-cache-dir may hold per model; the oldest states go first",
        json_schema_extra=_cli(metavar="MIB"),
    )
    slot_save_path: Path | None = Field(
        default=None,
        description="directory for POST /slots/{id}?action=save|restore (off when not set)",
        json_schema_extra=_cli(metavar="DIR"),
    )

    # --- several GPUs (docs/BACKENDS.md) ---------------------------------------------------
    split_mode: Literal["none", "layer", "row"] | None = Field(
        default=None,
        description="spread one model over the GPUs: none (one GPU), layer (whole layers per "
        "GPU) or row (matrices split by rows); default llama.cpp's (layer)",
        json_schema_extra=_cli(metavar="none|layer|row"),
    )
    tensor_split: FloatList = Field(
        default_factory=list,
        description="share of the model per GPU from GPU 0, e.g. 3,1 (default: by free memory)",
        json_schema_extra=_cli(metavar="3,1"),
    )
    main_gpu: int | None = Field(
        default=None,
        ge=0,
        description="GPU of split mode none, and of the small tensors otherwise (default 0)",
        json_schema_extra=_cli(metavar="N"),
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="engines per generation model, each with its own slots: one per GPU "
        "(from --main-gpu on), or CPU engines sharing the cores; requests go to the replica "
        "holding their prefix, else the one with the most free slots",
        json_schema_extra=_cli(metavar="N"),
    )
    ray: str | None = Field(
        default=None,
        description="serve through the Ray cluster at ADDRESS (host:port, or auto): --replicas "
        "engine replicas per model over its nodes (needs ggufworker[ray], see docs/DEPLOY.md)",
        json_schema_extra=_cli(metavar="ADDRESS"),
    )

    # --- several hosts: llama.cpp RPC workers (docs/DEPLOY.md) --------------------------------
    rpc: StrList = Field(
        default_factory=list,
        description="split a model over `ggufworker rpc-worker`s, in a child process: "
        "HOST:PORT[,...] for the first --model, or MODEL=HOST:PORT[,...]; repeatable",
        json_schema_extra=_cli("--rpc", "[MODEL=]HOST:PORT[,...]"),
    )

    @field_validator("rpc", mode="before")
    @classmethod
    def _rpc_entries(cls, value: Any) -> Any:
        """A JSON list, or one entry (its commas separate workers); checked at start-up."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [text] if text else []
        return value

    # --- security and limits ---------------------------------------------------------------
    api_keys: StrList = Field(
        default_factory=list,
        description="accepted Bearer API key; repeatable (none: no auth)",
        json_schema_extra=_cli("--api-key", "KEY"),
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="largest accepted request body, in bytes"
    )
    cors_origins: StrList = Field(
        default_factory=list,
        description="allowed CORS origin, '*' for any; repeatable (none: CORS off)",
        json_schema_extra=_cli("--cors-origin", "ORIGIN"),
    )

    # --- tool calls and reasoning -----------------------------------------------------------
    tool_call_format: str | None = Field(
        default=None,
        description="tool-call format for every model, overriding detection from the chat "
        "template (a name from docs/SERVER.md, e.g. hermes, llama3_json, generic)",
    )
    reasoning_format: Literal["none", "auto"] = Field(
        default="auto",
        description="auto: thinking goes to reasoning_content; none: it stays in content",
    )

    # --- Responses API (stored responses: SQLite under the home) -----------------------------
    responses_max_mb: float = Field(
        default=256.0,
        gt=0,
        description="MiB of stored responses kept; past it the oldest are deleted",
    )
    responses_max_age_days: float = Field(
        default=30.0,
        ge=0,
        description="days a stored response is kept (0: until the size limit removes it)",
    )

    # --- worker API ------------------------------------------------------------------------
    worker_id: str | None = Field(
        default=None, description="worker id sent in the readiness callback"
    )
    callback_url: str | None = Field(
        default=None,
        description="URL to POST {worker_id, url, model, backend, slots} to once ready",
    )
    callback_attempts: int = Field(
        default=8, ge=1, description="readiness callback tries before giving up"
    )

    @field_validator("tool_call_format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            from ggufworker.chat_formats import registered

            if value not in registered():
                raise ValueError(
                    f"unknown tool-call format {value!r} (known: {', '.join(sorted(registered()))})"
                )
        return value

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _split_floats(cls, value: Any) -> Any:
        """Accept "3,1", ["3,1"] (a repeated flag), [3, 1] or a JSON list."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            parts: list[Any] = []
            for item in value:
                if isinstance(item, str):
                    text = item.strip()
                    if text.startswith("["):
                        parts.extend(json.loads(text))
                    else:
                        parts.extend(p.strip() for p in text.split(",") if p.strip())
                else:
                    parts.append(item)
            return parts
        return value

    @field_validator("tensor_split")
    @classmethod
    def _check_shares(cls, value: list[float]) -> list[float]:
        if value and (any(x < 0 for x in value) or not any(x > 0 for x in value)):
            raise ValueError("shares must be >= 0 and at least one above 0, e.g. 3,1")
        return value

    @field_validator("models", "embedding_models", "pin", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Accept a JSON list or a comma-separated string (env vars, config files)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self) -> ServerSettings:
        if self.cache_type_v not in ("f32", "f16", "bf16") and self.flash_attn is False:
            raise ValueError(
                f"a {self.cache_type_v} V cache (--cache-type-v) needs flash attention: "
                "drop --no-flash-attn"
            )
        return self

    @model_validator(mode="after")
    def _draft_needs_a_model(self) -> ServerSettings:
        if self.spec_draft_model and self.spec_type == "none":
            self.spec_type = "draft"  # as llama-server: naming a draft model turns it on
        if self.spec_type in ("draft", "draft-simple") and not self.spec_draft_model:
            raise ValueError("--spec-type draft needs a draft model (--spec-draft-model)")
        return self

    def served_models(self) -> list[str]:
        """Generation models, with the registry default when none was named."""
        if self.models:
            return list(self.models)
        return [] if self.embedding_models else [DEFAULT_MODEL]

    def base_url(self) -> str:
        """Where clients reach this server."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


# --- CLI flags derived from the fields ---------------------------------------------------------


def cli_meta(info: Any) -> dict[str, Any]:
    """The ``cli`` entry of a field's ``json_schema_extra`` (flag name, metavar, short flag)."""
    extra = info.json_schema_extra
    meta = extra.get("cli") if isinstance(extra, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _flag_aliases() -> dict[str, str]:
    """Singular flag names (``model``) to field names (``models``)."""
    out = {}
    for name, info in ServerSettings.model_fields.items():
        cli = cli_meta(info)
        if cli.get("flag"):
            out[cli["flag"].lstrip("-").replace("-", "_")] = name
    return out
