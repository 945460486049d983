"""Typed experiment configs: one YAML with `model`, `data` and `train` sections.

Names follow nanoGPT (n_layer, block_size, gradient_accumulation_steps, ...). Loading
validates everything once: unknown keys, wrong types and impossible values end in one
ConfigError that names the key and where it came from (the file or the override).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raygpt.errors import ConfigError

# nanoGPT pads the vocabulary to a multiple of 64 so the output matmul tiles well on GPUs.
VOCAB_PAD_MULTIPLE = 64

Problem = tuple[tuple[str, ...], str]  # (keys within the section involved, what is wrong)


@dataclass
class ModelConfig:
    """The network. The defaults are nanoGPT's GPT-2; the switches after `activation` make the
    modern (Llama-family) block: rotary positions, RMSNorm, SwiGLU, grouped-query attention,
    untied embeddings. SmolLM2, Llama, Qwen2 and Mistral are settings of these."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # the tokenizer's; the embedding is padded (padded_vocab_size)
    dropout: float = 0.0
    bias: bool = True  # in every Linear and LayerNorm
    # GPT-2's released weights use the tanh approximation; nanoGPT trains with exact GELU.
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    n_kv_head: int | None = None  # key/value heads: fewer than n_head is GQA, 1 is MQA
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_hidden: int | None = None  # the MLP's inner width; None: 4 * n_embd
    qkv_bias: bool | None = None  # biases on q, k, v only (Qwen2); None: as `bias`
    tie_embeddings: bool = True  # the output head is the token embedding
    # Mixture of experts (model/moe.py): n_expert > 0 makes the MLPs of `moe_layers` (None:
    # every block) sparse, each token routed to n_expert_per_token experts.
    n_expert: int = 0
    n_expert_per_token: int = 2
    expert_hidden: int | None = None  # each expert's inner width; None: the MLP's
    shared_expert_hidden: int = 0  # a sigmoid-gated expert every token uses (Qwen2-MoE); 0: none
    moe_layers: list[int] | None = None
    router_renormalize: bool = True  # the top-k weights sum to 1 (Mixtral); false: Qwen2-MoE's

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def expert_width(self) -> int:
        return self.expert_hidden or self.hidden

    def is_sparse(self, layer: int) -> bool:
        """Whether block `layer`'s MLP is a mixture of experts."""
        return self.n_expert > 0 and (self.moe_layers is None or layer in self.moe_layers)

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def padded_vocab_size(self) -> int:
        m = VOCAB_PAD_MULTIPLE
        return (self.vocab_size + m - 1) // m * m

    def problems(self) -> list[Problem]:
        found = _positive(self, "n_layer", "n_head", "n_embd", "block_size", "vocab_size")
        if self.n_head > 0 and self.n_embd % self.n_head:
            found.append(
                (
                    ("n_embd", "n_head"),
                    f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}",
                )
            )
        if self.n_kv_head is not None and not (
            1 <= self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0
        ):
            found.append(
                (
                    ("n_kv_head", "n_head"),
                    f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}",
                )
            )
        if self.position == "rope" and self.n_head > 0 and self.head_dim % 2:
            found.append((("position",), f"rope needs an even head size, not {self.head_dim}"))
        if not self.rope_theta > 0:
            found.append((("rope_theta",), f"must be > 0, got {self.rope_theta}"))
        if not 0 < self.norm_eps < 1:
            found.append((("norm_eps",), f"must be in (0, 1), got {self.norm_eps}"))
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            found.append((("mlp_hidden",), f"must be >= 1, got {self.mlp_hidden}"))
        if not 0.0 <= self.dropout < 1.0:
            found.append((("dropout",), f"must be in [0, 1), got {self.dropout}"))
        return found + self._expert_problems()

    def _expert_problems(self) -> list[Problem]:
        if self.n_expert < 0:
            return [(("n_expert",), f"must be >= 0, got {self.n_expert}")]
        if self.n_expert == 0:
            given = [k for k in ("expert_hidden", "moe_layers") if getattr(self, k) is not None]
            given += ["shared_expert_hidden"] if self.shared_expert_hidden else []
            return [
                ((key, "n_expert"), "needs n_expert >= 1 (a mixture of experts)") for key in given
            ]
        found = []
        if not 1 <= self.n_expert_per_token <= self.n_expert:
            found.append(
                (
                    ("n_expert_per_token", "n_expert"),
                    f"must be in [1, n_expert={self.n_expert}], got {self.n_expert_per_token}",
                )
            )
        if self.expert_hidden is not None and self.expert_hidden < 1:
            found.append((("expert_hidden",), f"must be >= 1, got {self.expert_hidden}"))
        if self.shared_expert_hidden < 0:
            found.append(
                (("shared_expert_hidden",), f"must be >= 0, got {self.shared_expert_hidden}")
            )
        layers = self.moe_layers or []
        if any(not 0 <= i < self.n_layer for i in layers) or len(set(layers)) < len(layers):
            found.append(
                (
                    ("moe_layers", "n_layer"),
                    f"must be distinct block indices in [0, n_layer={self.n_layer}), got {layers}",
                )
            )
        return found


@dataclass
class DataConfig:
    # A folder of token shards made by jobs/prepare_data.py, or 'stdlib' (the embedded corpus).
    dataset: str = "stdlib"
    # 'gpt2', 'byte', or a model's own: the path of its tokenizer.json, or of a checkpoint
    # folder holding one (e.g. .cache/models/smollm2-135m-instruct)
    tokenizer: str = "gpt2"

    def problems(self) -> list[Problem]:
        found = [] if self.dataset.strip() else [(("dataset",), "must not be empty")]
        if not self.tokenizer.strip():
            found.append((("tokenizer",), "must not be empty"))
        return found


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    # 'scratch', 'resume', or a local HF GPT-2 folder / raygpt or nanoGPT checkpoint.
    init_from: str = "scratch"
    seed: int = 1337
    max_iters: int = 5000
    batch_size: int = 12  # per worker, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay until max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    always_save_checkpoint: bool = (
        True  # False: checkpoint only when val loss improves (and at the end)
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory
    checkpoint_interval: int | None = None  # steps between checkpoints; None: every eval_interval
    keep_checkpoints: int = 3  # the best (by val loss) are kept
    shuffle_buffer: int = 4096  # windows shuffled locally per epoch (0: stream order)
    # Mixture-of-experts models only: the router's losses, added to the training loss as
    # weight * their mean over sparse layers (model/moe.py).
    balance_loss_weight: float = 0.01  # Switch Transformer's load balancing (its alpha)
    router_z_loss_weight: float = 0.001  # ST-MoE's z-loss

    def problems(self) -> list[Problem]:
        found = _positive(
            self,
            "max_iters",
            "batch_size",
            "gradient_accumulation_steps",
            "eval_interval",
            "eval_iters",
            "log_interval",
        )
        found += _non_negative(
            self,
            "learning_rate",
            "min_lr",
            "warmup_iters",
            "weight_decay",
            "grad_clip",
            "balance_loss_weight",
            "router_z_loss_weight",
        )
        found += _positive(self, "keep_checkpoints")
        if self.checkpoint_interval is not None and self.checkpoint_interval < 1:
            found.append(
                (("checkpoint_interval",), f"must be >= 1, got {self.checkpoint_interval}")
            )
        if self.shuffle_buffer < 0:
            found.append((("shuffle_buffer",), f"must be >= 0, got {self.shuffle_buffer}"))
        if self.lr_decay_iters is not None and self.lr_decay_iters < 1:
            found.append((("lr_decay_iters",), f"must be >= 1, got {self.lr_decay_iters}"))
        if self.decay_lr and self.min_lr > self.learning_rate:
            found.append(
                (
                    ("min_lr", "learning_rate"),
                    f"min_lr={self.min_lr} is above learning_rate={self.learning_rate}",
                )
            )
        for beta in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, beta) < 1.0:
                found.append(((beta,), f"must be in [0, 1), got {getattr(self, beta)}"))
        if not self.init_from.strip():
            found.append((("init_from",), "must not be empty"))
        return found


@dataclass
class ScalingConfig:
    """How many Ray Train workers, on what (Ray's ScalingConfig, in nanoGPT's YAML)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # fractions are fine: Ray Data needs CPUs beside the workers
    gpus_per_worker: float = 1.0  # with use_gpu
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards parameters and optimizer state
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 0  # worker-group restarts from the last checkpoint
    torch_threads: int | None = None  # per worker; None: cpus_per_worker rounded up

    def problems(self) -> list[Problem]:
        found = _positive(self, "num_workers")
        if self.cpus_per_worker <= 0:
            found.append((("cpus_per_worker",), f"must be > 0, got {self.cpus_per_worker}"))
        if self.use_gpu and self.gpus_per_worker <= 0:
            found.append((("gpus_per_worker",), f"must be > 0, got {self.gpus_per_worker}"))
        found += _non_negative(self, "max_failures")
        if self.torch_threads is not None and self.torch_threads < 1:
            found.append((("torch_threads",), f"must be >= 1, got {self.torch_threads}"))
        return found


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Section name -> its dataclass, in file order.
SECTIONS: dict[str, type] = typing.get_type_hints(ExperimentConfig)


def load_experiment(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (or a nanoGPT-style .py config) and apply `a.b=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".py":
        from raygpt.nanogpt_config import read_nanogpt_config

        raw = read_nanogpt_config(path)
    else:
        raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections {list(SECTIONS)}")
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"override '{text}': section '{section}' is not a mapping")
        raw[section][name] = value
        origins[key] = f"override '{text}'"
    return experiment_from_dict(raw, source=str(path), origins=origins)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=3e-4` -> ('train.learning_rate', 0.0003); values are YAML scalars."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
    return key, parsed


def experiment_from_dict(
    raw: dict[str, Any], source: str = "<dict>", origins: dict[str, str] | None = None
) -> ExperimentConfig:
    """Build and validate an ExperimentConfig; errors name the key and its source."""
    origins = origins or {}

    def where(key: str) -> str:
        return origins.get(key, source)

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections {list(SECTIONS)}")
    sections: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{where(name)}: unknown section '{name}'{_hint(name, SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where(name)}: section '{name}' must be a mapping")
        sections[name] = _build_section(SECTIONS[name], values, name, where)
    config = ExperimentConfig(**sections)
    for name in SECTIONS:
        _raise_first_problem(getattr(config, name), name, where)
    return config


def _raise_first_problem(section: Any, name: str, where) -> None:
    for keys, problem in section.problems():
        full = [f"{name}.{key}" for key in keys]
        sources = " and ".join(dict.fromkeys(where(key) for key in full))
        raise ConfigError(f"{sources}: {full[0]}: {problem}")


def section_from_dict(cls: type, values: dict[str, Any], section: str, source: str) -> Any:
    """Build and validate one section (e.g. a ModelConfig stored in a checkpoint)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping")
    built = _build_section(cls, values, section, lambda _key: source)
    _raise_first_problem(built, section, lambda _key: source)
    return built


def _build_section(cls: type, values: dict[str, Any], section: str, where) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{section}.{key}"
        if key not in hints:
            raise ConfigError(f"{where(full)}: unknown key '{full}'{_hint(key, hints)}")
        try:
            kwargs[key] = _coerce(value, hints[key])
        except ValueError as err:
            raise ConfigError(f"{where(full)}: {full}: {err}") from None
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> Any:
    """Check `value` against a field's type hint; accept ints and numeric strings for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item) for v in value]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `6e-4` (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {hint!r}")  # a bug in raygpt, not user input


def _positive(obj: Any, *names: str) -> list[Problem]:
    return [((n,), f"must be >= 1, got {getattr(obj, n)}") for n in names if getattr(obj, n) < 1]


def _non_negative(obj: Any, *names: str) -> list[Problem]:
    return [((n,), f"must be >= 0, got {getattr(obj, n)}") for n in names if getattr(obj, n) < 0]


def _hint(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return data or {}
