"""Read a nanoGPT-style `config/train_*.py` into raygpt's config sections, without running it.

nanoGPT configs are plain assignments (`n_layer = 6`, `gradient_accumulation_steps = 5 * 8`).
We parse them with `ast` and evaluate only literals, arithmetic and names assigned earlier,
so a config file can never execute code.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from raygpt.errors import ConfigError

# nanoGPT's train.py globals -> raygpt "section.key".
NANOGPT_KEYS: dict[str, str] = {
    **{
        k: f"model.{k}"
        for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")
    },
    "dataset": "data.dataset",
    **{
        k: f"train.{k}"
        for k in (
            "out_dir",
            "init_from",
            "seed",
            "max_iters",
            "batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "min_lr",
            "warmup_iters",
            "lr_decay_iters",
            "decay_lr",
            "weight_decay",
            "beta1",
            "beta2",
            "grad_clip",
            "eval_interval",
            "eval_iters",
            "log_interval",
            "always_save_checkpoint",
            "dtype",
            "compile",
        )
    },
}

# nanoGPT settings that Ray decides (device, DDP backend) or that raygpt does not log to.
IGNORED_KEYS = {"device", "backend", "wandb_log", "wandb_project", "wandb_run_name"}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


def read_nanogpt_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Return `{section: {key: value}}` from a nanoGPT config file, ready for validation."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable Python config: {err}") from None
    names: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue  # only feeds expressions of ignored keys (e.g. wandb_run_name)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring or bare comment string
        if not (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            raise ConfigError(
                f"{path}:{node.lineno}: only plain `name = value` assignments are read "
                "(the file is parsed, never executed)"
            )
        name = node.targets[0].id
        if name in IGNORED_KEYS:
            continue
        if name not in NANOGPT_KEYS:
            raise ConfigError(f"{path}:{node.lineno}: unknown nanoGPT setting '{name}'")
        try:
            value = _evaluate(node.value, names)
        except (ValueError, TypeError, ArithmeticError) as err:
            raise ConfigError(f"{path}:{node.lineno}: {name}: {err}") from None
        names[name] = value
        section, key = NANOGPT_KEYS[name].split(".")
        sections.setdefault(section, {})[key] = value
    return sections


def _evaluate(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ValueError(f"'{node.id}' is not a setting assigned above")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, names))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError(f"exponent {right} is out of range for a config value")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(
        f"cannot evaluate `{ast.unparse(node)}` without executing it; use a literal value"
    )
