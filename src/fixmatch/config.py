"""Typed configuration: the dataclass schemas that validate every YAML option file.

`register_configs()` puts each schema into Hydra's ConfigStore; the YAML files in
`conf/<group>/` name them in their defaults lists, so a typo or a wrong type fails
at compose time. Code below the composition root only ever sees these dataclasses.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigEnum(Enum):
    """A config choice. It reads as its name, as written in the config: `${trainer.device}`
    in hydra.sweep.subdir makes a folder `cuda`, not `Device.cuda`."""

    def __str__(self) -> str:
        return self.name


class Algorithm(ConfigEnum):
    fixmatch = "fixmatch"  # labeled CE + confidence-masked pseudo-labels (Sohn et al. 2020)
    supervised = "supervised"  # the labeled-only baseline on the same split and budget


class Device(ConfigEnum):
    auto = "auto"  # cuda when available, else cpu
    cpu = "cpu"
    cuda = "cuda"


class Precision(ConfigEnum):
    auto = "auto"  # bf16 on CUDA devices that support it, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"  # torch.autocast with bfloat16 (no loss scaling needed)
    fp16 = "fp16"  # torch.autocast with float16 and a gradient scaler (CUDA only)


class CompileMode(ConfigEnum):
    """torch.compile's mode when trainer.compile=true (torch's names, with _ for -)."""

    default = "default"  # fused kernels; Python still launches every kernel
    reduce_overhead = "reduce-overhead"  # + CUDA graphs: each compiled graph replays in one launch
    max_autotune = "max-autotune"  # + autotuned kernels and CUDA graphs (long compiles)


class StrongAugment(ConfigEnum):
    """The augmentation of FixMatch's strong views (Sohn et al. 2020, Sec. 2.3)."""

    randaugment = "randaugment"  # RandAugment as ssl.randaugment_variant says
    ctaugment = "ctaugment"  # CTAugment: bin rates learned from labeled probes (ssl.cta_*)


class AugmentOn(ConfigEnum):
    """Where the weak and strong views are computed."""

    cpu = "cpu"  # per image in the loader workers (PIL/numpy)
    device = "device"  # in batches on the training device; the loaders ship raw uint8 images


class ProgressBar(ConfigEnum):
    auto = "auto"  # a tqdm bar on a terminal, plain log lines otherwise
    bar = "bar"
    log = "log"


class Resize(ConfigEnum):
    """How an image folder's images are brought to image_size x image_size."""

    resize = "resize"  # bilinear (antialiased) resize; the aspect ratio is not kept
    center_crop = "center_crop"  # the central square, upscaled first only if smaller
    none = "none"  # images must already be that size


class LabeledSplitRule(ConfigEnum):
    """How ssl.num_labeled labels are spread over the classes (fixmatch.data.split)."""

    balanced = "balanced"  # num_labeled / num_classes per class (the paper: CIFAR, STL-10)
    proportional = "proportional"  # ∝ class frequency, the official create_split.py rule (SVHN)
    largest_remainder = "largest_remainder"  # ∝ class frequency, Hamilton's rounding


@dataclass
class DatasetConfig:
    """Where the images come from and how they are normalised and flipped."""

    name: str = MISSING  # a key of fixmatch.data.datasets.DATASET_SOURCES
    root: str = MISSING  # relative paths are taken from the directory you launch in
    download: bool = True  # fetch torchvision-format files when absent (needs internet)
    num_classes: int = MISSING  # 0: as many as the dataset has (an image folder's class folders)
    channels: int = MISSING  # 1 (grayscale) or 3 (RGB); the model's input channels follow
    image_size: int = MISSING  # side in pixels of the (square) images the model sees
    # Per-channel, in [0, 1] pixel units; None: computed from the training images and
    # saved with the run (normalization.json and the checkpoint).
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    hflip: bool = True  # random horizontal flip in the weak augmentation
    resize: Resize = Resize.resize  # image folders: how images reach image_size
    skip_bad_images: bool = False  # image folders: skip unreadable images (with a warning)
    # Predefined folds (STL-10's fold_indices.txt) take precedence when ssl.num_labeled
    # equals their size; this rule applies otherwise.
    labeled_split: LabeledSplitRule = LabeledSplitRule.balanced


@dataclass
class ModelConfig:
    """A WideResNet as in the official FixMatch code (pre-activation blocks)."""

    name: str = "wide_resnet"
    depth: int = 28
    widen_factor: int = 2
    num_stages: int = 3  # 4 for STL-10's WRN-37-2
    bn_momentum: float = 0.001  # PyTorch convention; the official TF decay 0.999
    leaky_slope: float = 0.1


@dataclass
class OptimConfig:
    """SGD with Nesterov momentum, the cos(7πk/16K) schedule and the EMA of weights."""

    name: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # conv/linear weights only
    cosine_fraction: float = 0.4375  # 7/16: lr(k) = lr · cos(7πk / 16K), ends at 0.195·lr
    ema_enabled: bool = True
    ema_decay: float = 0.999
    ema_warmup: bool = False  # decay_t = min(decay, (1+t)/(10+t)); for short runs only


@dataclass
class SSLConfig:
    """The semi-supervised algorithm, its labeled split and its batch composition."""

    algorithm: Algorithm = Algorithm.fixmatch
    num_labeled: int = 4000  # N labels in all, N / num_classes per class
    split_seed: int = MISSING  # seed of the labeled split; the paper's folds are seeds 1..5
    batch_size: int = 64  # B, labeled images per step
    unlabeled_ratio: int = 7  # μ: μB unlabeled images per step
    threshold: float = 0.95  # τ, confidence needed to keep a pseudo-label
    lambda_u: float = 1.0  # λu, weight of the unlabeled loss
    strong_augment: StrongAugment = StrongAugment.randaugment  # ctaugment: ssl=fixmatch_cta
    randaugment_variant: str = "official"  # official | paper | port (docs/PROTOCOL.md)
    randaugment_num_ops: int = 2
    cutout_fraction: float = 0.5  # Cutout side as a fraction of the image side
    include_labeled_in_unlabeled: bool = True  # the paper: the unlabeled set is all of train
    # CTAugment (official FixMatch flags; Berthelot et al. 2020, Sec. 3.2.2)
    cta_depth: int = 2  # ops per policy
    cta_threshold: float = 0.8  # bins whose normalised weight is below it are never drawn
    cta_decay: float = 0.99  # rate <- decay * rate + (1 - decay) * probe proximity
    # Batch k samples its policies from the rates after step k - lag (exact resume with any
    # number of workers); at least 2 x trainer.num_workers.
    cta_policy_lag: int = 64


@dataclass
class TrainerConfig:
    """How long and where to train, and how often to evaluate, log and save."""

    total_steps: int = 1_048_576  # K = 2^20
    eval_every_steps: int = 1024
    checkpoint_every_steps: int = 0  # 0: at every evaluation
    keep_checkpoints: int = 2  # the newest K step checkpoints are kept
    resume: bool = True  # continue the run already in the output folder, if any
    log_every_steps: int = 64  # cadence of train/* scalars (syncs the device once)
    eval_batch_size: int = 1024
    device: Device = Device.auto
    precision: Precision = Precision.auto  # bf16 autocast on CUDA, fp32 elsewhere
    channels_last: bool = True  # NHWC activations: faster convolutions on CPUs and tensor cores
    compile: bool = False  # torch.compile the model (compiles once per shape/mode, not per step)
    compile_mode: CompileMode = CompileMode.reduce_overhead  # CUDA graphs on CUDA; plain compile elsewhere
    augment_on: AugmentOn = AugmentOn.cpu
    num_workers: int = 4  # loader processes; 0 loads in the main process
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress_bar: ProgressBar = ProgressBar.auto
    sync_bn: bool = False  # torchrun: BatchNorm over the global batch instead of per rank


@dataclass
class Config:
    """The whole experiment, as composed from `conf/config.yaml`."""

    seed: int = 1
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    ssl: SSLConfig = MISSING
    trainer: TrainerConfig = MISSING


# What each key says about a run, read by resume (which changes a resumed run may make) and by
# the results table (which runs are seeds of one experiment), so the two cannot disagree. Every
# key not named here says *what* experiment a run is.
# Where the run happens and how it reports: no figure depends on them. (dataset.root only says
# where the same files are kept on each machine for CIFAR, SVHN and STL-10; for image folders
# the root is the data, and the table names it in the row, results_rows.dataset_label.)
MACHINE_KEYS = frozenset({
    "dataset.root", "dataset.download", "trainer.device", "trainer.num_workers",
    "trainer.num_threads", "trainer.progress_bar", "trainer.eval_batch_size",
    "trainer.log_every_steps", "trainer.checkpoint_every_steps", "trainer.keep_checkpoints",
    "trainer.resume",
})
# How the step is executed: rounding differs (sync_bn: which images' BatchNorm statistics are
# pooled), so a table keeps such runs apart, but a run resumed on other hardware may switch them.
EXECUTION_KEYS = frozenset({
    "trainer.channels_last", "trainer.compile", "trainer.compile_mode", "trainer.sync_bn",
})
# The schedule's length and evaluation cadence: a resumed run may extend them (metrics.json
# records earlier_total_steps); a table keeps runs of different lengths apart.
LENGTH_KEYS = frozenset({"trainer.total_steps", "trainer.eval_every_steps"})
# The seeds of a run: its own, yet two runs that share them repeat each other.
SEED_KEYS = frozenset({"seed", "ssl.split_seed"})
# What a resumed run may change (a completed run keeps the config it ran with): resume, and a
# rerun sweep's jobs matched to their runs, read it.
RESUMABLE_KEYS = MACHINE_KEYS | EXECUTION_KEYS | LENGTH_KEYS


def register_configs() -> None:
    """Store the schemas so YAML option files can name them in their defaults lists."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="optim", name="optim_schema", node=OptimConfig)
    store.store(group="ssl", name="ssl_schema", node=SSLConfig)
    store.store(group="trainer", name="trainer_schema", node=TrainerConfig)


def flatten_config(node: dict, prefix: str = "") -> Dict[str, object]:
    """A config as a plain nested dict (OmegaConf.to_container) -> dotted keys and values,
    `{"ssl": {"threshold": 0.95}}` -> `{"ssl.threshold": 0.95}`; lists become tuples, so a
    value can be a dictionary key (a table cell) and compares as a value.

    Args:
        node: the config, or a node of it, as nested plain dicts.
        prefix: prepended to every key (the dotted path of `node`, ending in a dot).

    Returns:
        One entry per leaf value, keyed by its dotted path.
    """
    flat: Dict[str, object] = {}
    for name, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = tuple(value) if isinstance(value, list) else value
    return flat

