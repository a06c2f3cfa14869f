"""Loading the checkpoints people already have: transformers' DETR layouts mapped onto detr_hf's parameter names.

Transformers' Deformable DETR checkpoints load into `DeformableDetrForObjectDetection` with the same renames (their
in-memory names are detr_hf's), minus the decoder's tied copies of the detection heads.

Three layouts exist for `DetrForObjectDetection` weights:
- the Hub's main revision (e.g. facebook/detr-resnet-50): a timm ResNet under `backbone.conv_encoder.model`
  (`layer1.0.conv1.weight`), attention `out_proj`, feed-forward `fc1`/`fc2` directly in each layer;
- its `no_timm` revision and what transformers 5 writes to disk: the same, with a transformers ResNet
  (`embedder.embedder.convolution.weight`, `encoder.stages.0.layers.0.layer.0.…`);
- transformers 5's in-memory names (`backbone.model`, `o_proj`, `mlp.fc1`), which are also detr_hf's own.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.utils import cached_file

from .configuration_deformable import DeformableDetrConfig
from .configuration_detr import DetrConfig
from .layers.backbone import inflate_input_conv
from .logging_utils import dropped_logs

logger = logging.getLogger(__name__)

_STEM = "backbone.model.embedder.embedder.convolution.weight"
_CLASS_HEADS = ("class_labels_classifier.", "class_embed.")  # DETR's, Deformable DETR's
_LABEL_EMBEDDINGS = ("model.denoising_label_embed.",)  # a row per class too: renewed with the class head
# Deformable DETR's decoder holds the detection heads too, tied to the top-level ones; transformers 5 writes only one
# of the two copies (the decoder's box heads), and only the first class head (it ties the others to it).
_TIED_DECODER_HEADS = re.compile(r"^model\.decoder\.((?:bbox|class)_embed\.)")
_HEAD_INDEX = re.compile(r"^(bbox|class)_embed\.(\d+)\.")
_QUERIES = "query_position_embeddings.weight"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")

_TIMM_RESNET_KEY = re.compile(
    r"backbone\.model\.(?:(?P<stem>conv1|bn1)|layer(?P<stage>\d)\.(?P<block>\d+)\."
    r"(?:(?P<kind>conv|bn)(?P<index>\d)|downsample\.(?P<shortcut>[01])))\."
)


def _timm_to_transformers(match: re.Match) -> str:
    if match["stem"]:
        part = "convolution" if match["stem"] == "conv1" else "normalization"
        return f"backbone.model.embedder.embedder.{part}."
    prefix = f"backbone.model.encoder.stages.{int(match['stage']) - 1}.layers.{match['block']}."
    if match["shortcut"] is not None:
        return prefix + ("shortcut.convolution." if match["shortcut"] == "0" else "shortcut.normalization.")
    part = "convolution" if match["kind"] == "conv" else "normalization"
    return prefix + f"layer.{int(match['index']) - 1}.{part}."


_RENAMES: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"backbone\.conv_encoder\.model\."), "backbone.model."),
    (_TIMM_RESNET_KEY, _timm_to_transformers),
    (re.compile(r"\.out_proj\."), ".o_proj."),
    (re.compile(r"(layers\.\d+)\.(fc[12])\."), r"\1.mlp.\2."),
]


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames the keys of any transformers DETR or Deformable DETR layout to detr_hf's (detr_hf's own keys pass
    unchanged)."""
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if _TIED_DECODER_HEADS.match(key):
            if _TIED_DECODER_HEADS.sub(r"\1", key) in state_dict:
                continue  # the top-level copy is there too
            key = _TIED_DECODER_HEADS.sub(r"\1", key)
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        converted[key] = tensor
    return converted


def read_state_dict(path: str, **hub_kwargs: Any) -> dict[str, torch.Tensor]:
    """The weights of a local folder or Hub repository (safetensors, or a PyTorch pickle of tensors only)."""
    file = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if file is not None:
        return load_file(file)
    file = cached_file(path, "pytorch_model.bin", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if file is None:
        raise OSError(f"{path!r} has neither model.safetensors nor pytorch_model.bin.")
    return torch.load(file, map_location="cpu", weights_only=True)


def _complete_deformable_heads(state_dict: dict[str, torch.Tensor], config: DetrConfig) -> None:
    """Gives Deformable DETR one class and box head per decoder layer with box refinement (copies of head 0 where
    the checkpoint has tied them), and only head 0 without, plus the encoder's with two-stage, in place."""
    layers = (config.decoder_layers if config.with_box_refine else 1) + int(config.two_stage)
    for key in [k for k in state_dict if _HEAD_INDEX.match(k)]:
        kind, index = _HEAD_INDEX.match(key).groups()
        if int(index) >= layers:
            del state_dict[key]
        elif index == "0":
            for i in range(1, layers):
                state_dict.setdefault(key.replace(f"{kind}_embed.0.", f"{kind}_embed.{i}.", 1), state_dict[key])


def _adapt_to_config(state_dict: dict[str, torch.Tensor], config: DetrConfig) -> list[str]:
    """Inflates an RGB stem to `config.num_channels`, extends the object queries to `config.num_queries` and drops a
    class head of another label set, in place; returns the dropped keys."""
    if config.model_type == DeformableDetrConfig.model_type:
        _complete_deformable_heads(state_dict, config)
    for key in [k for k in state_dict if k.endswith(_STEM)]:
        if state_dict[key].shape[1] != config.num_channels:
            logger.warning(
                "Inflating the checkpoint's first convolution from %d to %d input channels.",
                state_dict[key].shape[1],
                config.num_channels,
            )
            state_dict[key] = inflate_input_conv(state_dict[key], config.num_channels)
    for key in [k for k in state_dict if k.endswith(_QUERIES)]:
        queries = state_dict[key]
        if queries.shape[0] != config.num_queries:
            logger.warning(
                "The checkpoint has %d object queries; this model has %d, made by cycling through the trained ones "
                "(with a little noise so that copies can specialize).",
                queries.shape[0],
                config.num_queries,
            )
            repeated = queries.repeat(-(-config.num_queries // queries.shape[0]), 1)[: config.num_queries]
            noise = torch.randn(repeated.shape, generator=torch.Generator().manual_seed(0)) * 0.01 * queries.std()
            noise[: queries.shape[0]] = 0  # the trained queries stay exactly as they were
            state_dict[key] = repeated + noise
    head = [k for k in state_dict if k.startswith(_CLASS_HEADS)]
    if head and state_dict[head[0]].shape[0] != config.num_classes_with_background:
        logger.warning(
            "The checkpoint's class head predicts %d classes; this model has %d labels (%s), so the class head is "
            "newly initialized and needs fine-tuning. Everything else is loaded.",
            state_dict[head[0]].shape[0],
            config.num_labels,
            ", ".join(list(config.id2label.values())[:8]) + (", ..." if config.num_labels > 8 else ""),
        )
        head += [k for k in state_dict if k.startswith(_LABEL_EMBEDDINGS)]
        for key in head:
            del state_dict[key]
        return head
    return []


def _only_about(keys: set[str]):
    """Whether a transformers load report lists no key but `keys` (then our own message has said it all)."""

    def drop(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        listed = {line.split("|")[0].strip() for line in message.splitlines() if "|" in line} - {"Key", ""}
        return "LOAD REPORT" in message and {k for name in listed for k in _expand_braces(name)} <= keys

    return drop


def _expand_braces(name: str) -> list[str]:
    """The keys a load report's `class_embed.{0, 1}.bias` stands for."""
    match = re.search(r"\{([^}]*)\}", name)
    if match is None:
        return [name]
    parts = [p.strip() for p in match.group(1).split(",")]
    return [k for p in parts for k in _expand_braces(name[: match.start()] + p + name[match.end() :])]


def load_pretrained(parent_from_pretrained, cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """`from_pretrained` for detr_hf models: reads the weights, converts their layout, adapts them to the requested
    config, then hands them to transformers' own loading (dtype, device placement, missing-weight init)."""
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    config = kwargs.pop("config", None)
    output_loading_info = kwargs.pop("output_loading_info", False)
    if not isinstance(config, DetrConfig):
        source = config or pretrained_model_name_or_path
        source_type = cls.config_class.get_config_dict(source, **hub_kwargs)[0].get("model_type")
        wants_aux = "auxiliary_loss" not in kwargs
        with dropped_logs("transformers.configuration_utils", lambda r: "to instantiate a model of type" in r.msg):
            config, kwargs = cls.config_class.from_pretrained(source, return_unused_kwargs=True, **kwargs)
        if source_type in ("detr", "deformable_detr") and wants_aux:
            config.auxiliary_loss = True  # transformers' checkpoints say False; it only matters for training
    config.use_pretrained_backbone = False  # the checkpoint holds the backbone
    state_dict = convert_state_dict(read_state_dict(str(pretrained_model_name_or_path), **hub_kwargs))
    reinitialized = _adapt_to_config(state_dict, config)
    for key in list(kwargs):
        if key in _HUB_KWARGS:
            kwargs.pop(key)
    # transformers' load report would list the class head we chose to re-initialize: drop it when that is all it says
    with dropped_logs("transformers.modeling_utils", _only_about(set(reinitialized))):
        model, info = parent_from_pretrained(
            None, *model_args, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
        )
    model.name_or_path = str(pretrained_model_name_or_path)
    model.config._name_or_path = str(pretrained_model_name_or_path)
    return (model, info) if output_loading_info else model
