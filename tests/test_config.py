from pathlib import Path

import pytest

from raygpt.config import ExperimentConfig, load_experiment
from raygpt.errors import ConfigError, RaygptError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_loads_into_typed_sections(tmp_path):
    path = write(
        tmp_path,
        """
model: {n_layer: 4, n_head: 4, n_embd: 128, block_size: 256, bias: false}
data: {dataset: stdlib, tokenizer: byte}
train: {batch_size: 8, learning_rate: 6e-4, max_iters: 100, lr_decay_iters: 80}
""",
    )
    config = load_experiment(path)
    assert isinstance(config, ExperimentConfig)
    assert (config.model.n_layer, config.model.n_embd, config.model.bias) == (4, 128, False)
    # YAML 1.1 reads 6e-4 as a string; a float field takes it as the number it means.
    assert config.train.learning_rate == pytest.approx(6e-4)
    assert config.data.tokenizer == "byte"
    assert config.train.gradient_accumulation_steps == 1  # default kept
    assert config.model.padded_vocab_size == 50304


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, "model: {n_layer: 2, n_head: 2, n_embd: 64}\n")
    config = load_experiment(
        path, ["model.n_layer=6", "train.learning_rate=3e-4", "train.compile=true"]
    )
    assert config.model.n_layer == 6
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.train.compile is True
    with pytest.raises(ConfigError, match=r"override 'model.n_head=3'.*not divisible by n_head=3"):
        load_experiment(path, ["model.n_head=3"])
    with pytest.raises(ConfigError, match=r"override 'train.lr=1'.*unknown key 'train.lr'"):
        load_experiment(path, ["train.lr=1"])
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_experiment(path, ["n_layer"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {n_layers: 4}", r"unknown key 'model.n_layers' \(did you mean 'n_layer'\?\)"),
        ("modle: {n_layer: 4}", r"unknown section 'modle' \(did you mean 'model'\?\)"),
        (
            "model: {n_embd: 100, n_head: 12}",
            r"model.n_embd: n_embd=100 is not divisible by n_head=12",
        ),
        ("model: {block_size: 0}", r"model.block_size: must be >= 1, got 0"),
        ("train: {learning_rate: -0.1}", r"train.learning_rate: must be >= 0, got -0.1"),
        ("train: {batch_size: 'eight'}", r"train.batch_size: expected an integer, got 'eight'"),
        ("train: {compile: 'yes'}", r"train.compile: expected true or false"),
        (
            "train: {dtype: fp8}",
            r"train.dtype: must be one of \['auto', 'float32', 'bfloat16', 'float16'\]",
        ),
        ("model: {dropout: 1.5}", r"model.dropout: must be in \[0, 1\)"),
        (
            "train: {min_lr: 1.0, learning_rate: 0.1}",
            r"train.min_lr: min_lr=1.0 is above learning_rate=0.1",
        ),
        ("model: [1, 2]", r"section 'model' must be a mapping"),
        ("model: {n_layer: 4", r"not valid YAML"),
    ],
)
def test_bad_yaml_configs_name_key_and_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment(tmp_path / "nope.yaml")


NANOGPT_SHAKESPEARE_CHAR = """
# train a miniature character-level shakespeare model
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # context of up to 256 previous characters
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small
warmup_iters = 100 # not super necessary potentially
# on macbook also add
# device = 'cpu'  # run on cpu only
# compile = False # do not torch compile the model
"""

NANOGPT_FINETUNE = """
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False # feel free to turn on
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl' # this is the largest GPT-2 model
always_save_checkpoint = False
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
decay_lr = False
"""


def test_nanogpt_python_configs_are_read_without_executing(tmp_path):
    config = load_experiment(write(tmp_path, NANOGPT_SHAKESPEARE_CHAR, "train_shakespeare_char.py"))
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (6, 6, 384)
    assert config.model.block_size == 256 and config.model.dropout == pytest.approx(0.2)
    assert config.train.out_dir == "out-shakespeare-char"
    assert config.train.beta2 == pytest.approx(0.99)
    assert config.train.always_save_checkpoint is False
    assert config.data.dataset == "shakespeare_char"

    ft = load_experiment(write(tmp_path, NANOGPT_FINETUNE, "finetune_shakespeare.py"))
    assert ft.train.init_from == "gpt2-xl"
    assert ft.train.gradient_accumulation_steps == 32 and ft.train.decay_lr is False


def test_nanogpt_config_arithmetic_and_rejections(tmp_path):
    ok = write(
        tmp_path,
        "batch_size = 12\ngradient_accumulation_steps = 5 * 8\nmax_iters = 600000\nlr_decay_iters = max_iters\n",
        "a.py",
    )
    config = load_experiment(ok)
    assert config.train.gradient_accumulation_steps == 40
    assert config.train.lr_decay_iters == 600000

    marker = tmp_path / "executed"
    evil = write(
        tmp_path, f"n_layer = __import__('pathlib').Path({str(marker)!r}).touch()\n", "b.py"
    )
    with pytest.raises(ConfigError, match=r"b.py:1: n_layer: cannot evaluate"):
        load_experiment(evil)
    assert not marker.exists()

    with pytest.raises(ConfigError, match=r"c.py:2: unknown nanoGPT setting 'n_layers'"):
        load_experiment(write(tmp_path, "n_layer = 2\nn_layers = 4\n", "c.py"))
    with pytest.raises(ConfigError, match=r"d.py:1: only plain `name = value` assignments"):
        load_experiment(write(tmp_path, "if True:\n    n_layer = 2\n", "d.py"))
    with pytest.raises(ConfigError, match=r"e.py.*model.n_embd: n_embd=100 is not divisible"):
        load_experiment(write(tmp_path, "n_embd = 100\nn_head = 12\n", "e.py"))


def test_every_shipped_config_validates():
    from raygpt.tune.scaling_config import load_scaling
    from raygpt.tune.sweep_config import load_sweep

    shipped = sorted((REPO / "configs").glob("*.yaml"))
    assert shipped, "configs/ should hold experiment YAMLs"
    for path in shipped:
        if path.name.startswith(("serve", "runtime_env")):
            continue  # checked by the Serve tests and the job-submission tests
        # each kind of YAML through its own loader, as its job reads it
        loader = {"sweep_": load_sweep, "scaling_": load_scaling}.get(
            path.name[: path.name.find("_") + 1], load_experiment
        )
        try:
            loader(path)
        except RaygptError as err:
            # a cluster's study is checked down to its data, which lives on the cluster
            if "dataset folder not found: /mnt/shared/" not in str(err):
                raise


def test_edge_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.learning_rate: expected a finite number"):
        load_experiment(write(tmp_path, "train: {learning_rate: .nan}"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_experiment(write(tmp_path, "- 1\n- 2\n"), ["model.n_layer=2"])
    # an empty section takes overrides like a missing one
    assert load_experiment(write(tmp_path, "model:\n"), ["model.n_layer=3"]).model.n_layer == 3
    with pytest.raises(ConfigError, match=r"f.py:1: n_layer: division by zero"):
        load_experiment(write(tmp_path, "n_layer = 1 / 0\n", "f.py"))
    with pytest.raises(ConfigError, match=r"g.py:1: n_layer: exponent 10000000000 is out of range"):
        load_experiment(write(tmp_path, "n_layer = 10 ** 10 ** 10\n", "g.py"))
